"""The filter over a run's scored pairs that the samples, histogram and export endpoints share,
and the keyset cursor of pages.

A filter is applied in two places with the same meaning: as SQL conditions (exports,
served by the indexes on `scores`) and as a NumPy mask over the run's cached score
columns (pages, match counts and histograms, which must consider every matching pair).
tests/backend/test_query.py checks that both select the same pairs.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator
from sqlalchemy import ColumnElement, exists

from clipmem.backend.api.errors import bad_parameter
from clipmem.backend.api.frames import ScoreFrame
from clipmem.backend.models import Run, Score, Tag
from clipmem.scoring.columns import MEMORIZED, REASON, REASONS, SCORE_COLUMNS, SCORE_NAMES, SCORED_SPLITS

TRUTH_PATTERN = r"^[^\x00-\x1f\x7f]{1,64}$"
TAG_PATTERN = r"^[A-Za-z0-9_.:-][A-Za-z0-9_. :-]{0,63}$"
TAG_RULE = "1-64 characters: letters, digits, space, '_', '.', ':', '-' (not starting with a space)"
SAMPLE_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,512}$"
SampleIdText = Annotated[str, StringConstraints(pattern=SAMPLE_ID_PATTERN)]
TruthTag = Annotated[str, StringConstraints(pattern=TRUTH_PATTERN)]
UserTag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
ScoreName = Literal[SCORE_NAMES]  # type: ignore[valid-type]
Reason = Literal[REASONS]  # type: ignore[valid-type]
Order = Literal["desc", "asc"]


class _FilterFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: list[Literal[SCORED_SPLITS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Only pairs in these scored splits (repeat the parameter for several): "
                                          "candidate pairs are seen by f only, independent pairs by g only.")
    truth: list[TruthTag] = Field(default_factory=list, description="Only pairs with one of these truth tags "
                                                                    "(clean, swapped, vague, ...).")
    tag: list[UserTag] = Field(default_factory=list, description="Only pairs carrying at least one of these user "
                                                                 "tags.")
    caption: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
                                description="Only pairs with a caption containing this text (case-insensitive; "
                                            "any of the pair's captions).")
    memorized: bool | None = Field(None, description="true: only pairs flagged memorized (clipmem_q <= the run's "
                                                     "FDR, settings.score.fdr); false: only pairs not flagged. Runs "
                                                     "scored without significance have no flags (422).")
    reason: list[Reason] = Field(default_factory=list, description="Only pairs whose reason (why the pair is "
                                                                   "memorized: docs/why.md) is one of these (repeat "
                                                                   "the parameter for several). Runs scored before "
                                                                   "reasons have none (422).")

    @model_validator(mode="after")
    def _ranges_ordered(self):
        for name, lo, hi in self.ranges():
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{name}_min ({lo}) is greater than {name}_max ({hi})")
        return self

    def ranges(self) -> list[tuple[str, float | None, float | None]]:
        """(score, min, max) for every score with a bound."""
        out = []
        for name in SCORE_NAMES:
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo is not None or hi is not None:
                out.append((name, lo, hi))
        return out

    def scores_used(self) -> set[str]:
        """The score (flag and reason) columns the filter reads."""
        return ({name for name, _, _ in self.ranges()} | ({MEMORIZED} if self.memorized is not None else set())
                | ({REASON} if self.reason else set()))


def _range_fields() -> dict:
    fields = {}
    for column in SCORE_COLUMNS:
        for bound, word in (("min", ">="), ("max", "<=")):
            fields[f"{column.name}_{bound}"] = (float | None, Field(
                None, allow_inf_nan=False,
                description=f"Only pairs with {column.name} {word} this value. {column.name}: {column.description}"))
    return fields


SampleFilter = create_model("SampleFilter", __base__=_FilterFields, **_range_fields())


class SortFields(BaseModel):
    sort: ScoreName = Field("clipmem", description="Score to sort by.")
    order: Order = Field("desc", description="desc: highest first; asc: lowest first.")


def run_flags(run: Run) -> list[str]:
    """The flag columns (scoring.columns.FLAG_COLUMNS) the run has: ingest summarizes the flagged pairs exactly
    when the run's scores.parquet holds `memorized`."""
    return [MEMORIZED] if "significance" in run.summary else []


def has_reasons(run: Run) -> bool:
    """Whether the run has a reason per scored pair: ingest counts the pairs per reason exactly when the run's
    scores.parquet holds `reason`."""
    return "reasons" in run.summary


def require_scores(run: Run, names: set[str]) -> None:
    """422 when the request uses a score (flag or reason) this run does not have (optional scores of newer
    runs)."""
    if MEMORIZED in names and MEMORIZED not in run_flags(run):
        raise bad_parameter(("query", MEMORIZED), f"run '{run.name}' has no {MEMORIZED} flags: it was scored "
                                                  "without significance (no null.parquet), so no pair is tested")
    if REASON in names and not has_reasons(run):
        raise bad_parameter(("query", REASON), f"run '{run.name}' has no {REASON}s: it was scored before pairs got "
                                               "one (docs/why.md)")
    missing = sorted(set(names) - set(run.score_names) - {MEMORIZED, REASON})
    if missing:
        raise bad_parameter(("query", missing[0]), f"run '{run.name}' has no {', '.join(missing)} scores (it has: "
                                                   f"{', '.join(run.score_names)})")


def sql_conditions(run: Run, f: _FilterFields) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Score.run_id == run.id]
    if f.split:
        conditions.append(Score.split.in_(f.split))
    if f.truth:
        conditions.append(Score.truth.in_(f.truth))
    if f.tag:
        conditions.append(exists().where(Tag.run_id == Score.run_id, Tag.pair_index == Score.pair_index,
                                         Tag.tag.in_(f.tag)))
    if f.caption:
        conditions.append(Score.caption_search.contains(f.caption.lower(), autoescape=True))
    if f.memorized is not None:
        conditions.append(Score.memorized == f.memorized)
    if f.reason:
        conditions.append(Score.reason.in_(f.reason))
    for name, lo, hi in f.ranges():
        column = getattr(Score, name)
        if lo is not None:
            conditions.append(column >= lo)
        if hi is not None:
            conditions.append(column <= hi)
    return conditions


def frame_mask(frame: ScoreFrame, f: _FilterFields, tagged_pairs: np.ndarray | None) -> np.ndarray:
    """The same selection as sql_conditions, over the cached columns; `tagged_pairs` are the pair
    indexes carrying one of f.tag (looked up by the caller)."""
    mask = np.ones(frame.size, dtype=bool)
    if f.split:
        mask &= np.isin(frame.split_code, frame.codes("split", f.split))
    if f.truth:
        mask &= np.isin(frame.truth_code, frame.codes("truth", f.truth))
    if f.tag:
        mask &= np.isin(frame.pair_index, tagged_pairs if tagged_pairs is not None else [])
    if f.caption:
        mask &= frame.caption_contains(f.caption.lower())
    if f.memorized is not None:
        mask &= frame.flags[MEMORIZED] == f.memorized
    if f.reason:
        mask &= (np.isin(frame.reason_code, frame.codes(REASON, f.reason)) if frame.reason_code is not None
                 else np.zeros(frame.size, dtype=bool))
    for name, lo, hi in f.ranges():
        values = frame.scores[name]
        if lo is not None:
            mask &= values >= lo
        if hi is not None:
            mask &= values <= hi
    return mask


def frame_page(frame: ScoreFrame, mask: np.ndarray, sort: str, order: str, after: tuple[float, int] | None,
               count: int) -> np.ndarray:
    """pair_index of the next `count` matching pairs in page order (sort value, then pair_index), after the
    cursor position `after`: keyset pagination over the cached columns.

    Whatever the filter, this reads each matching pair once (a partial sort), so a page takes the same few
    milliseconds whether one pair in a thousand matches or all of them, and whether or not the filter is
    correlated with the sort; a SQL index walk can read most of the run before it fills a page."""
    column = frame.scores[sort]
    if after is not None:
        value, last = after
        if order == "desc":
            mask = mask & ((column < value) | ((column == value) & (frame.pair_index < last)))
        else:
            mask = mask & ((column > value) | ((column == value) & (frame.pair_index > last)))
    rows = np.flatnonzero(mask)
    values = column[rows]
    if len(values) > count:
        # every row up to the count-th value in page order (more when it has ties)
        if order == "desc":
            rows = rows[values >= np.partition(values, len(values) - count)[len(values) - count]]
        else:
            rows = rows[values <= np.partition(values, count - 1)[count - 1]]
    ranked = rows[np.lexsort((frame.pair_index[rows], column[rows]))]  # ascending (value, pair_index)
    if order == "desc":
        ranked = ranked[::-1]
    return frame.pair_index[ranked[:count]]


# keyset pagination: the cursor carries the last row's sort value and pair_index


def encode_cursor(sort: str, order: str, value: float, pair_index: int) -> str:
    raw = json.dumps({"s": sort, "o": order, "v": value, "i": pair_index}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, order: str) -> tuple[float, int]:
    malformed = bad_parameter(("query", "cursor"), "cursor is malformed: pass the next_cursor of a previous page "
                                                   "unchanged")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value, pair_index = float(raw["v"]), int(raw["i"])
        made_for = (raw["s"], raw["o"])
    except (ValueError, KeyError, TypeError, OverflowError, binascii.Error):
        raise malformed from None
    if not np.isfinite(value) or not 0 <= pair_index < 2**31:
        raise malformed
    if made_for != (sort, order):
        raise bad_parameter(("query", "cursor"), f"cursor belongs to sort={made_for[0]}, order={made_for[1]}; start "
                                                 "again without a cursor when changing the sort")
    return value, pair_index
