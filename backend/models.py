"""The database schema (SQLAlchemy 2.0 typed ORM). Migrations in backend/migrations create exactly this.

A run owns its rows through (run_id, pair_index): pair_index is the pair's position in
the run's samples.parquet, so every per-pair table shares one compact key and keyset
pagination has a unique tie-breaker.

On PostgreSQL the tables with rows per pair (samples, scores, embedding_points,
pair_neighbours) are partitioned by run: ingest loads a run's rows into tables of their own without
indexes and attaches them, so indexes are built by sorting once rather than row by row,
and deleting a run drops its partitions. SQLite ignores the partitioning. `scores` repeats split, truth and a lower-cased
caption text from `samples` so every filter and sort the API offers is served by an
index on one table; those copies are written once at ingest and never change.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Boolean, DateTime, Double, ForeignKey, ForeignKeyConstraint, Index, Integer,
                        LargeBinary, MetaData, String, Text, UniqueConstraint, column)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from clipmem.scoring.columns import FLAG_COLUMNS, REASON, SCORE_COLUMNS

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    """One ingested run directory."""

    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused, so caches keyed by id stay valid

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    source_dir: Mapped[str] = mapped_column(String(4096))
    dataset_kind: Mapped[str] = mapped_column(String(64))
    data_root: Mapped[str] = mapped_column(String(4096))
    model: Mapped[str] = mapped_column(String(256))
    split_sizes: Mapped[dict] = mapped_column(JSON)
    settings: Mapped[dict] = mapped_column(JSON)          # the run's config.json
    utility: Mapped[dict] = mapped_column(JSON)           # metrics.json "f" and "g": retrieval, zero-shot
    run_metrics: Mapped[dict] = mapped_column(JSON)       # the rest of metrics.json: scoring speed, timings
    summary: Mapped[dict] = mapped_column(JSON)           # per-truth means and detection quality, from ingest
    score_names: Mapped[list] = mapped_column(JSON)       # score columns this run has
    n_samples: Mapped[int] = mapped_column(Integer)
    n_scored: Mapped[int] = mapped_column(Integer)
    n_embedded: Mapped[int] = mapped_column(Integer)
    embedding_dim: Mapped[int] = mapped_column(Integer)
    map_method: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # layers.parquet rows (tower, layer, truth, pairs, layer_mem, delta_layer_mem, their intervals and UnitMem where
    # the run has them: JSON, so new optional columns need no migration); null when the run has none
    layers: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # layer_curves.parquet as {sample_id: {tower: [layer_mem per block]}}; null when the run has none
    layer_curves: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # runs made by `clipmem experiment`: the experiment's name (experiment.json, or `clipmem ingest --experiment`)
    # and experiment.json as written (seed, captions_per_image, text_noise, removal_method, removal_count);
    # null for other runs
    experiment: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    experiment_params: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # null.parquet's clipmem_raw values by null key ({null_for: [values]}): the measured null every scored pair's
    # p-value is taken against; null for runs scored without one (older runs, or runs without S_E pairs)
    null_scores: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # the run's rows in pair_neighbours (neighbours.parquet); 0 for runs scored without neighbours
    n_neighbours: Mapped[int] = mapped_column(Integer, server_default="0")
    # the epochs trajectory.parquet tracks, ascending (issue 19); null for runs trained without --track-epochs
    tracked_epochs: Mapped[list | None] = mapped_column(JSON, nullable=True)


class Sample(Base):
    """Every planned pair of a run (all four splits)."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("run_id", "sample_id"),
        Index("ix_samples_run_id_split", "run_id", "split", "pair_index"),
        {"postgresql_partition_by": "LIST (run_id)"},
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    pair_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(512))
    split: Mapped[str] = mapped_column(String(16))
    truth: Mapped[str] = mapped_column(String(64))
    captions: Mapped[list] = mapped_column(JSON)
    # relative to runs.data_root; a "shard.tar#member" ref has its image in `thumbnails`
    image_ref: Mapped[str] = mapped_column(String(4096))
    image_stored: Mapped[bool] = mapped_column(Boolean)
    attributes: Mapped[dict] = mapped_column(JSON)


def _sample_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(["run_id", "pair_index"], ["samples.run_id", "samples.pair_index"],
                                ondelete="CASCADE")


def score_index(name: str, partial: bool) -> Index:
    """(run, score, pair) index of one score (or flag) column. An optional column (null in runs scored without it)
    gets a partial index that leaves its nulls out, so such runs write no index entries for it; a query uses that
    index only when its WHERE implies `name IS NOT NULL` (a range on the column does; sorting by it must add the
    condition, see backend/api/routers/exports.py)."""
    where = ({"postgresql_where": column(name).is_not(None), "sqlite_where": column(name).is_not(None)}
             if partial else {})
    return Index(f"ix_scores_run_id_{name}", "run_id", name, "pair_index", **where)


class Score(Base):
    """Every score of a scored pair (splits candidate and independent)."""

    __tablename__ = "scores"
    __table_args__ = (
        _sample_fk(),
        Index("ix_scores_run_id_split", "run_id", "split", "pair_index"),
        Index("ix_scores_run_id_truth", "run_id", "truth", "pair_index"),
        *(score_index(c.name, partial=not c.required) for c in SCORE_COLUMNS),
        *(score_index(name, partial=True) for name in (*FLAG_COLUMNS, REASON)),
        {"postgresql_partition_by": "LIST (run_id)"},
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String(16))
    truth: Mapped[str] = mapped_column(String(64))
    # every caption of the pair, lower-cased and joined by newlines: what the caption filter searches
    caption_search: Mapped[str] = mapped_column(Text)
    n_captions: Mapped[int] = mapped_column(Integer)
    seen_by: Mapped[str] = mapped_column(String(1))  # the literal model (f or g) trained with the pair
    clipmem: Mapped[float] = mapped_column(Double)
    clipmem_raw: Mapped[float] = mapped_column(Double)
    clipmem_contrastive: Mapped[float] = mapped_column(Double)
    clipmem_contrastive_raw: Mapped[float] = mapped_column(Double)
    align_f: Mapped[float] = mapped_column(Double)
    align_g: Mapped[float] = mapped_column(Double)
    contrastive_f: Mapped[float] = mapped_column(Double)
    contrastive_g: Mapped[float] = mapped_column(Double)
    clipscore_f: Mapped[float] = mapped_column(Double)
    clipscore_g: Mapped[float] = mapped_column(Double)
    mem_image: Mapped[float | None] = mapped_column(Double)
    mem_text: Mapped[float | None] = mapped_column(Double)
    mem_image_raw: Mapped[float | None] = mapped_column(Double)
    mem_text_raw: Mapped[float | None] = mapped_column(Double)
    mem_swap_text: Mapped[float | None] = mapped_column(Double)
    mem_swap_image: Mapped[float | None] = mapped_column(Double)
    clipmem_p: Mapped[float | None] = mapped_column(Double)
    clipmem_q: Mapped[float | None] = mapped_column(Double)
    clipmem_raw_lo: Mapped[float | None] = mapped_column(Double)
    clipmem_raw_hi: Mapped[float | None] = mapped_column(Double)
    clipmem_raw_sd: Mapped[float | None] = mapped_column(Double)
    clipmem_contrastive_p: Mapped[float | None] = mapped_column(Double)
    clipmem_contrastive_q: Mapped[float | None] = mapped_column(Double)
    # why the pair is memorized (issue 18, docs/why.md); null in runs scored before it
    miscaption: Mapped[float | None] = mapped_column(Double)
    image_neighbour_sim: Mapped[float | None] = mapped_column(Double)
    caption_neighbour_sim: Mapped[float | None] = mapped_column(Double)
    neighbour_agreement: Mapped[float | None] = mapped_column(Double)
    neighbour_caption_margin: Mapped[float | None] = mapped_column(Double)
    reason: Mapped[str | None] = mapped_column(String(32))  # one of scoring.columns.REASONS
    # the pair's trajectory summaries (scoring.columns.DYNAMICS_COLUMNS); null in runs trained without
    # --track-epochs, and mem_epoch also where the pair never exceeds the null's 95th percentile
    mem_epoch: Mapped[float | None] = mapped_column(Double)
    mem_auc: Mapped[float | None] = mapped_column(Double)
    mem_variability: Mapped[float | None] = mapped_column(Double)
    # clipmem_q <= the run's FDR; null in runs scored without significance
    memorized: Mapped[bool | None] = mapped_column(Boolean)
    # the key of the null in runs.null_scores the pair is tested against (scoring.columns.null_key); null when the
    # run has no null
    null_for: Mapped[str | None] = mapped_column(String(16))
    # per-view alignments, float32 little-endian
    views_f: Mapped[bytes] = mapped_column(LargeBinary)
    views_g: Mapped[bytes] = mapped_column(LargeBinary)


class PairNeighbour(Base):
    """neighbours.parquet: a scored pair's nearest other images (kind "image") or captions (kind "caption") under the
    model that did not train on it, by rank: the evidence behind its `reason` (GET .../samples/{id}/evidence). Not
    the embedding-neighbour search of GET /runs/{run}/neighbours, which searches the embeddings at request time."""

    __tablename__ = "pair_neighbours"
    __table_args__ = (
        _sample_fk(),
        {"postgresql_partition_by": "LIST (run_id)"},
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)       # scoring.columns.NEIGHBOUR_KINDS
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)         # 1 = nearest
    neighbour_index: Mapped[int] = mapped_column(Integer)                # the neighbouring pair's pair_index
    # image-image (kind image) or caption-caption (kind caption) cosine, under the pair's "without" model
    similarity: Mapped[float] = mapped_column(Double)
    # the neighbour's caption against the pair's caption (kind image), or its image against the pair's image
    agreement: Mapped[float] = mapped_column(Double)


class TrajectoryPoint(Base):
    """trajectory.parquet (issue 19): a pair's scores after a tracked epoch of training. Scored pairs have one row
    per epoch with null null_for; S_E pairs have one per epoch and null key (null_for), the null's rows. A few rows
    per pair and tracked epoch, read by pair (a sample's trajectory) or by run (the summaries), so one table with a
    surrogate key rather than a partition per run; ingest's bulk load sends them at once."""

    __tablename__ = "trajectory_points"
    __table_args__ = (
        _sample_fk(),
        Index("ix_trajectory_points_run_id_pair_index_epoch", "run_id", "pair_index", "epoch"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer)
    pair_index: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    null_for: Mapped[str | None] = mapped_column(String(16))  # the null key on S_E rows; null on scored pairs'
    align_f: Mapped[float] = mapped_column(Double)
    align_g: Mapped[float] = mapped_column(Double)
    clipmem_raw: Mapped[float] = mapped_column(Double)
    clipmem_contrastive_raw: Mapped[float] = mapped_column(Double)


class EmbeddingBlock(Base):
    """A run's embeddings under one model and modality, float16 row-major, in blocks of consecutive rows.

    Row r is the pair whose embedding_points.embedding_row is r. Blocks (not one row per
    pair) let the API load a million-row matrix with a few reads.
    """

    __tablename__ = "embedding_blocks"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(1), primary_key=True)       # literal model: f or g
    modality: Mapped[str] = mapped_column(String(5), primary_key=True)    # image or text
    block_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_row: Mapped[int] = mapped_column(Integer)
    n_rows: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RunSnapshot(Base):
    """Whole-run arrays in Arrow IPC form, split into blocks, written at ingest from the same data as the
    tables: "scores" holds the run's score columns with split, truth and caption_search (in pair_index
    order), "embedding_rows" the pair_index of each embedding row. The API loads its in-memory copies
    from these in a fraction of a second instead of fetching a million rows; they never change."""

    __tablename__ = "run_snapshots"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    block_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class EmbeddingPoint(Base):
    """A pair with embeddings (scored and S_E pairs): its row in the blocks and its place on each 2-D map."""

    __tablename__ = "embedding_points"
    __table_args__ = (
        _sample_fk(),
        UniqueConstraint("run_id", "embedding_row"),
        Index("ix_embedding_points_run_id_map_rank", "run_id", "map_rank"),
        {"postgresql_partition_by": "LIST (run_id)"},
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedding_row: Mapped[int] = mapped_column(Integer)
    # a seeded random order: the first N points by map_rank are a uniform sample of the map
    map_rank: Mapped[int] = mapped_column(Integer)
    f_image_x: Mapped[float] = mapped_column(Double)
    f_image_y: Mapped[float] = mapped_column(Double)
    f_text_x: Mapped[float] = mapped_column(Double)
    f_text_y: Mapped[float] = mapped_column(Double)
    g_image_x: Mapped[float] = mapped_column(Double)
    g_image_y: Mapped[float] = mapped_column(Double)
    g_text_x: Mapped[float] = mapped_column(Double)
    g_text_y: Mapped[float] = mapped_column(Double)


class Thumbnail(Base):
    """An image that is not a plain file (a WebDataset shard member), stored once at ingest."""

    __tablename__ = "thumbnails"
    __table_args__ = (_sample_fk(),)

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_type: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Tag(Base):
    """A user tag on a pair."""

    __tablename__ = "tags"
    __table_args__ = (
        _sample_fk(),
        Index("ix_tags_run_id_tag", "run_id", "tag", "pair_index"),
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# tables with rows per pair of a run, partitioned by run on PostgreSQL (samples first: the others reference it)
PARTITIONED = (Sample, Score, EmbeddingPoint, PairNeighbour)


def partition_name(table: str, run_id: int) -> str:
    return f"{table}_run_{int(run_id)}"
