"""The filter means the same in SQL (pages, exports) and over the cached columns (counts, histograms)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from clipmem.backend.api.frames import ScoreFrame
from clipmem.backend.api.query import SampleFilter, frame_mask, frame_page, sql_conditions
from clipmem.backend.ingest import ingest
from clipmem.backend.models import Run, Score, Tag
from clipmem.backend.synthetic_run import write_synthetic_run

SCORES = ["clipmem", "clipscore_g", "align_f", "mem_text", "clipmem_q"]
bounds = st.one_of(st.none(), st.floats(-0.2, 1.2, allow_nan=False))

filters = st.fixed_dictionaries({}, optional={
    "split": st.lists(st.sampled_from(["candidate", "independent"]), max_size=2),
    "truth": st.lists(st.sampled_from(["clean", "swapped", "vague", "atypical", "missing-tag"]), max_size=3),
    "tag": st.lists(st.sampled_from(["q-a", "q-b", "q-none"]), max_size=2),
    "caption": st.sampled_from(["red", "RED", "is", "circle", "the star", "%", "_", "zz"]),
    "memorized": st.booleans(),
    **{f"{name}_{side}": bounds for name in SCORES for side in ("min", "max")},
})


@pytest.fixture(scope="module")
def tagged_run(db, client, tmp_path_factory):
    """A run of this module's own, with user tags q-a and q-b on overlapping pairs."""
    path = write_synthetic_run(tmp_path_factory.mktemp("query") / "query-props", 60, 60, 20, 40, seed=31,
                               optional_scores=True, significance=True)
    ingest(db.engine, path)
    ids = [item["sample_id"] for item in client.get("/runs/query-props/samples", params={"limit": 30}).json()["items"]]
    for tag, chosen in (("q-a", ids[:20]), ("q-b", ids[10:30])):
        assert client.post(f"/runs/query-props/tags/{tag}", json={"sample_ids": chosen}).status_code == 200
    yield "query-props"
    client.delete("/runs/query-props")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=filters)
def test_sql_and_cached_columns_select_the_same_pairs(db, tagged_run, raw):
    for name in SCORES:  # keep only consistent ranges: an inverted one is a 422, tested elsewhere
        lo, hi = raw.get(f"{name}_min"), raw.get(f"{name}_max")
        if lo is not None and hi is not None and lo > hi:
            raw[f"{name}_min"], raw[f"{name}_max"] = hi, lo
    query = SampleFilter(**raw)
    with Session(db.engine) as session:
        run = session.scalar(select(Run).where(Run.name == tagged_run))
        tagged = np.array(session.scalars(select(Tag.pair_index).where(Tag.run_id == run.id,
                                                                       Tag.tag.in_(query.tag))).all(), dtype=np.int64)
        frame = ScoreFrame.load(session.connection(), run)
        by_sql = set(session.scalars(select(Score.pair_index).where(*sql_conditions(run, query))))
    by_mask = set(frame.pair_index[frame_mask(frame, query, tagged if query.tag else None)].tolist())
    assert by_sql == by_mask



@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.integers(0, 5), min_size=0, max_size=60), data=st.data())
def test_frame_pages_walk_the_selection_in_keyset_order(values, data):
    """Chaining pages through their last row gives every selected pair once, in (value, pair_index) order."""
    n = len(values)
    frame = ScoreFrame(pair_index=np.arange(n) * 3 + 1, split_code=np.zeros(n, dtype=np.int8), split_values=("candidate",),
                       truth_code=np.zeros(n, dtype=np.int32), truth_values=("clean",), caption_search=None,
                       scores={"clipmem": np.array(values, dtype=np.float64) / 4})
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    order = data.draw(st.sampled_from(["asc", "desc"]))
    limit = data.draw(st.integers(1, 7))
    expected = sorted(zip(frame.scores["clipmem"][mask], frame.pair_index[mask]), reverse=order == "desc")
    walked, after = [], None
    while True:
        page = frame_page(frame, mask, "clipmem", order, after, limit).tolist()
        walked += page
        if len(page) < limit:
            break
        last = page[-1]
        after = (frame.scores["clipmem"][(last - 1) // 3], last)
    assert walked == [int(p) for _, p in expected]
