"""`clipmem ingest`: load a finished run directory into the database in one transaction.

The run directory is read and checked before the database is touched. The writes then
happen in one transaction, so a failure leaves no trace of the run; the maps, summaries
and stored thumbnails are computed in a second thread meanwhile, since the database
does most of its work (index builds) without holding Python's GIL. A run is identified
by its name and by its directory: ingesting either again is refused unless `replace` is
given, in which case the old run is deleted in the same transaction, after the new one
is written. The user tags of the old run move to the new run's pairs with the same sample
ids; tags on pairs the new run lacks would be lost, which is refused unless `drop_tags`.
"""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, insert, or_, select, update

from clipmem.backend.images import is_stored, store_shard_images
from clipmem.backend.maps import check_map_method, project
from clipmem.backend.models import EmbeddingBlock, Run, Sample, Tag
from clipmem.backend.rundir import RunContents, check_experiment_name, read_run
from clipmem.backend.snapshots import EMBEDDING_ROWS, SCORES, write_snapshot
from clipmem.backend.store import bulk_insert, delete_run, is_postgresql, load_run_rows
from clipmem.backend.summary import summarize
from clipmem.scoring.columns import DYNAMICS_NAMES, REASON
from clipmem.scoring.errors import ClipmemError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RUN_NAME_RULE = "1-100 characters: letters, digits, '.', '_', '-', starting with a letter or digit"
EMBEDDING_BLOCK_BYTES = 4 * 1024 * 1024
MAP_SEED = 0


@dataclass
class IngestResult:
    run_id: int
    name: str
    samples: int
    scored: int
    embedded: int
    seconds: float
    replaced: list[str] = field(default_factory=list)
    # seconds per phase: read (and check) the files, write to the database, derive (maps, summary, thumbnails;
    # runs during write)
    timings: dict[str, float] = field(default_factory=dict)
    tags_kept: int = 0      # user tags of the replaced run(s) now on the new run's pairs
    tags_dropped: int = 0   # user tags lost with pairs the new run lacks (only with drop_tags)
    warnings: list[str] = field(default_factory=list)  # what could not be checked (see backend.rundir)


def check_run_name(name: str) -> str:
    if not RUN_NAME.match(name):
        raise ClipmemError(f"run name '{name}' is not allowed ({RUN_NAME_RULE}); choose one with --name")
    return name


def ingest(engine: Engine, run_dir: Path, name: str | None = None, replace: bool = False,
           map_method: str = "pca", stored_thumbnail_px: int = 256,
           experiment: str | None = None, drop_tags: bool = False) -> IngestResult:
    """Load a finished run. `experiment` names the experiment the run belongs to instead of the name in its
    experiment.json (which it must have: the parameters place it in the experiment's grids). `drop_tags`
    lets `replace` lose the user tags of pairs the new run lacks."""
    started = time.perf_counter()
    timings = {}
    if experiment is not None:
        check_experiment_name(experiment, "--experiment")
    contents = read_run(Path(run_dir))
    if experiment is not None:
        if contents.experiment_params is None:
            raise ClipmemError(f"--experiment {experiment}: {contents.path} has no experiment.json (written by "
                               "`clipmem experiment`), so it has no parameters to place it in an experiment")
        contents.experiment = experiment
    timings["read"] = time.perf_counter() - started
    name = check_run_name(name or contents.path.name)
    check_map_method(map_method)
    with engine.connect() as conn:  # fail fast, before the expensive part
        old_runs = _conflicts(conn, name, contents.path, replace)
        _carried_tags(conn, old_runs, contents, drop_tags)

    with ThreadPoolExecutor(max_workers=1) as pool, engine.begin() as conn:
        derived = pool.submit(_derive, contents, map_method, stored_thumbnail_px)
        old_runs = _conflicts(conn, name, contents.path, replace)
        # again in the transaction: tags added since the check above count too
        tags, tags_dropped = _carried_tags(conn, old_runs, contents, drop_tags)
        run_id = _insert_run(conn, contents, map_method)
        _insert_samples(conn, run_id, contents)
        if tags:
            conn.execute(insert(Tag), [{"run_id": run_id, **tag} for tag in tags])
        _insert_scores(conn, run_id, contents)
        if contents.neighbours is not None:
            _insert_neighbours(conn, run_id, contents.neighbours)
        if contents.trajectory is not None:
            _insert_trajectory(conn, run_id, contents.trajectory)
        maps, summary, thumbnails, timings["derive"] = derived.result()
        _insert_embeddings(conn, run_id, contents, maps)
        if thumbnails:
            pair_index, media_type, data = zip(*thumbnails)
            bulk_insert(conn, "thumbnails", {"run_id": [run_id] * len(data), "pair_index": pair_index,
                                             "media_type": media_type, "data": data})
        for old_id, _ in old_runs:
            delete_run(conn, old_id)
        conn.execute(update(Run).where(Run.id == run_id).values(name=name, summary=summary))
        if is_postgresql(conn):
            conn.exec_driver_sql("ANALYZE runs")
    seconds = time.perf_counter() - started
    timings["write"] = seconds - timings["read"]  # derive overlaps it
    return IngestResult(run_id=run_id, name=name, samples=len(contents.samples), scored=len(contents.scores),
                        embedded=len(contents.embedding_pair_index), seconds=seconds,
                        replaced=[old_name for _, old_name in old_runs], timings=timings, tags_kept=len(tags),
                        tags_dropped=tags_dropped, warnings=contents.warnings)


def _derive(contents: RunContents, map_method: str, thumbnail_px: int):
    """What ingest computes from the run: 2-D maps, score summary, thumbnails of shard images."""
    started = time.perf_counter()
    maps = {model: project(contents.embeddings[f"{model}_image"], contents.embeddings[f"{model}_text"],
                           map_method, MAP_SEED) for model in ("f", "g")}
    summary = summarize(contents.scores, contents.score_names, contents.fdr)
    samples = contents.samples
    stored = [(i, sid, ref) for i, sid, ref in zip(samples["pair_index"].tolist(), samples["sample_id"].tolist(),
                                                   samples["image_ref"].tolist()) if is_stored(ref)]
    thumbnails = store_shard_images(contents.data_root, stored, thumbnail_px)
    return maps, summary, thumbnails, time.perf_counter() - started


def _conflicts(conn, name: str, source: Path, replace: bool) -> list[tuple[int, str]]:
    """Runs that the new one would replace; refuses them unless `replace`."""
    rows = conn.execute(select(Run.id, Run.name, Run.source_dir)
                        .where(or_(Run.name == name, Run.source_dir == str(source)))).all()
    if rows and not replace:
        same_dir = [r for r in rows if r.source_dir == str(source)]
        if same_dir:
            raise ClipmemError(f"{source} is already ingested as run '{same_dir[0].name}'; pass --replace to "
                               "replace it")
        raise ClipmemError(f"a run named '{name}' already exists (from {rows[0].source_dir}); pass --replace to "
                           "replace it, or --name to choose another name")
    return [(r.id, r.name) for r in rows]


def _carried_tags(conn, old_runs: list[tuple[int, str]], contents: RunContents,
                  drop_tags: bool) -> tuple[list[dict], int]:
    """The replaced runs' user tags placed on the new run's pairs with the same sample ids ({pair_index, tag,
    created_at}, once per pair and tag), and how many tags are lost with pairs the new run lacks; losing
    any is refused unless `drop_tags`."""
    if not old_runs:
        return [], 0
    rows = conn.execute(
        select(Sample.sample_id, Tag.tag, Tag.created_at, Run.name)
        .join(Sample, and_(Sample.run_id == Tag.run_id, Sample.pair_index == Tag.pair_index))
        .join(Run, Run.id == Tag.run_id)
        .where(Tag.run_id.in_([old_id for old_id, _ in old_runs]))
        .order_by(Run.name, Tag.tag, Sample.sample_id)).all()
    position = pd.Index(contents.samples["sample_id"].to_numpy(), dtype=object).get_indexer(
        [r.sample_id for r in rows])
    pair_index = contents.samples["pair_index"].to_numpy()
    carried: dict[tuple[int, str], datetime] = {}
    lost = []
    for row, at in zip(rows, position.tolist()):
        if at < 0:
            lost.append(row)
            continue
        key = (int(pair_index[at]), row.tag)
        carried[key] = min(carried.get(key, row.created_at), row.created_at)  # the first time it was put on
    if lost and not drop_tags:
        first = lost[0]
        raise ClipmemError(f"replacing run '{first.name}' would drop {len(lost)} user tag(s) on pairs the new run "
                           f"lacks (e.g. tag '{first.tag}' on sample {first.sample_id}); pass --drop-tags to "
                           "replace it anyway")
    return [{"pair_index": p, "tag": tag, "created_at": at} for (p, tag), at in carried.items()], len(lost)


def _insert_run(conn, contents: RunContents, map_method: str) -> int:
    metrics = contents.metrics
    values = dict(
        # a placeholder until the end of the transaction, so a replaced run keeps its name meanwhile
        name=f"~ingesting-{uuid.uuid4().hex}",
        source_dir=str(contents.path),
        dataset_kind=contents.dataset_kind,
        data_root=str(contents.data_root),
        model=str(contents.run_config.train.model),
        split_sizes=contents.split_sizes,
        settings=contents.config,
        utility={k: metrics[k] for k in ("f", "g") if isinstance(metrics.get(k), dict)},
        run_metrics={k: v for k, v in metrics.items() if k not in ("f", "g")},
        summary={},  # filled in at the end of the transaction, once computed
        score_names=contents.score_names,
        n_samples=len(contents.samples),
        n_scored=len(contents.scores),
        n_embedded=len(contents.embedding_pair_index),
        embedding_dim=int(contents.embeddings["f_image"].shape[1]),
        map_method=map_method,
        created_at=datetime.now(timezone.utc),
        layers=contents.layers,
        layer_curves=contents.layer_curves,
        experiment=contents.experiment,
        experiment_params=contents.experiment_params,
        null_scores=contents.null_scores,
        n_neighbours=0 if contents.neighbours is None else len(contents.neighbours),
        tracked_epochs=contents.tracked_epochs,
    )
    return conn.execute(insert(Run).values(**values).returning(Run.id)).scalar_one()


def _json_strings(strings: list[str]) -> str:
    """A list of strings as JSON text; the same as json.dumps, several times faster per call."""
    return "[" + ",".join(map(encode_basestring_ascii, strings)) + "]"


def _insert_samples(conn, run_id: int, contents: RunContents) -> None:
    s = contents.samples
    refs = s["image_ref"].tolist()
    load_run_rows(conn, "samples", run_id, {
        "run_id": np.full(len(s), run_id), "pair_index": s["pair_index"].to_numpy(),
        "sample_id": s["sample_id"].tolist(), "split": s["split"].tolist(), "truth": s["truth"].tolist(),
        "captions": [_json_strings(c) for c in s["captions"]], "image_ref": refs,
        "image_stored": [is_stored(ref) for ref in refs], "attributes": s["attributes"].tolist(),
    })


def _insert_scores(conn, run_id: int, contents: RunContents) -> None:
    """The scores table, and the run's snapshot of the same columns for the API's in-memory copy."""
    import pyarrow as pa

    sc = contents.scores.sort_values("pair_index")
    captions = contents.samples["captions"].to_numpy()[sc["pair_index"].to_numpy()]
    caption_search = ["\n".join(c).lower() for c in captions]
    scores = {name: sc[name].to_numpy() for name in contents.score_names}
    flags = {name: sc[name].to_numpy() for name in contents.flag_names}
    null_for = {"null_for": sc["null_for"].tolist()} if contents.null_scores is not None else {}
    reason = {REASON: sc[REASON].tolist()} if REASON in sc.columns else {}
    # NaN mem_epoch (never above the threshold) goes in as NULL
    dynamics = {name: [None if np.isnan(v) else v for v in sc[name].tolist()]
                for name in DYNAMICS_NAMES if name in sc.columns}
    load_run_rows(conn, "scores", run_id, {
        "run_id": np.full(len(sc), run_id), "pair_index": sc["pair_index"].to_numpy(),
        "split": sc["split"].tolist(), "truth": sc["truth"].tolist(), "caption_search": caption_search,
        "n_captions": sc["n_captions"].to_numpy(), "seen_by": sc["seen_by"].tolist(), **scores, **flags,
        **null_for, **reason, **dynamics, "views_f": sc["views_f"].tolist(), "views_g": sc["views_g"].tolist(),
    })
    write_snapshot(conn, run_id, SCORES, pa.table({
        "pair_index": sc["pair_index"].to_numpy(), "split": pa.array(sc["split"].tolist()).dictionary_encode(),
        "truth": pa.array(sc["truth"].tolist()).dictionary_encode(), "caption_search": caption_search, **scores,
        **flags, **{name: pa.array(values).dictionary_encode() for name, values in reason.items()}}))


def _insert_neighbours(conn, run_id: int, neighbours: pd.DataFrame) -> None:
    """neighbours.parquet's rows (backend.rundir._read_neighbours) into pair_neighbours."""
    if neighbours.empty:
        return
    load_run_rows(conn, "pair_neighbours", run_id, {
        "run_id": np.full(len(neighbours), run_id), "pair_index": neighbours["pair_index"].to_numpy(),
        "kind": neighbours["kind"].tolist(), "rank": neighbours["rank"].to_numpy(),
        "neighbour_index": neighbours["neighbour_index"].to_numpy(),
        "similarity": neighbours["similarity"].to_numpy(), "agreement": neighbours["agreement"].to_numpy()})


def _insert_trajectory(conn, run_id: int, trajectory: pd.DataFrame) -> None:
    """trajectory.parquet's rows (backend.rundir._read_trajectory) into trajectory_points."""
    bulk_insert(conn, "trajectory_points", {
        "run_id": np.full(len(trajectory), run_id), "pair_index": trajectory["pair_index"].to_numpy(),
        "epoch": trajectory["epoch"].to_numpy(),
        "null_for": [None if pd.isna(key) else key for key in trajectory["null_for"].tolist()],
        **{name: trajectory[name].to_numpy() for name in ("align_f", "align_g", "clipmem_raw",
                                                          "clipmem_contrastive_raw")}})


def _insert_embeddings(conn, run_id: int, contents: RunContents, maps: dict) -> None:
    import pyarrow as pa

    n = len(contents.embedding_pair_index)
    points = {"run_id": np.full(n, run_id), "pair_index": contents.embedding_pair_index,
              "embedding_row": np.arange(n), "map_rank": np.random.default_rng(MAP_SEED).permutation(n)}
    for model in ("f", "g"):
        image_xy, text_xy = maps[model]
        points.update({f"{model}_image_x": image_xy[:, 0], f"{model}_image_y": image_xy[:, 1],
                       f"{model}_text_x": text_xy[:, 0], f"{model}_text_y": text_xy[:, 1]})
    load_run_rows(conn, "embedding_points", run_id, points)
    write_snapshot(conn, run_id, EMBEDDING_ROWS, pa.table({"pair_index": contents.embedding_pair_index}))

    dim = int(contents.embeddings["f_image"].shape[1])
    per_block = max(1, EMBEDDING_BLOCK_BYTES // (2 * dim))
    blocks = []
    for model in ("f", "g"):
        for modality in ("image", "text"):
            matrix = contents.embeddings[f"{model}_{modality}"].astype("<f2")
            for block_index, first in enumerate(range(0, n, per_block)):
                part = matrix[first:first + per_block]
                blocks.append(dict(run_id=run_id, model=model, modality=modality, block_index=block_index,
                                   first_row=first, n_rows=len(part), dim=dim, data=part.tobytes()))
    conn.execute(insert(EmbeddingBlock), blocks)  # a few rows of megabytes: sent as binary parameters
