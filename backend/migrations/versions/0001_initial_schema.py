"""Initial schema: runs, samples, scores, embeddings and 2-D maps, run snapshots, stored thumbnails, user tags.

On PostgreSQL samples, scores and embedding_points are partitioned by run (see backend/models.py).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# frozen copy of the score columns at this revision: (name, nullable)
SCORES = (
    ("clipmem", False), ("clipmem_raw", False), ("clipmem_contrastive", False), ("clipmem_contrastive_raw", False),
    ("align_f", False), ("align_g", False), ("contrastive_f", False), ("contrastive_g", False),
    ("clipscore_f", False), ("clipscore_g", False),
    ("mem_image", True), ("mem_text", True), ("mem_image_raw", True), ("mem_text_raw", True),
    ("mem_swap_text", True), ("mem_swap_image", True),
)
MAP_AXES = ("f_image_x", "f_image_y", "f_text_x", "f_text_y", "g_image_x", "g_image_y", "g_text_x", "g_text_y")


def _pair_key():
    return [sa.Column("run_id", sa.Integer(), nullable=False), sa.Column("pair_index", sa.Integer(), nullable=False)]


def _sample_fk(table: str):
    return sa.ForeignKeyConstraint(["run_id", "pair_index"], ["samples.run_id", "samples.pair_index"],
                                   name=op.f(f"fk_{table}_run_id_samples"), ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("source_dir", sa.String(4096), nullable=False),
        sa.Column("dataset_kind", sa.String(64), nullable=False),
        sa.Column("data_root", sa.String(4096), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("split_sizes", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("utility", sa.JSON(), nullable=False),
        sa.Column("run_metrics", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("score_names", sa.JSON(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("n_scored", sa.Integer(), nullable=False),
        sa.Column("n_embedded", sa.Integer(), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("map_method", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_runs_name")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "embedding_blocks",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(1), nullable=False),
        sa.Column("modality", sa.String(5), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("first_row", sa.Integer(), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_embedding_blocks_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "model", "modality", "block_index", name=op.f("pk_embedding_blocks")),
    )
    op.create_table(
        "run_snapshots",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_snapshots_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "name", "block_index", name=op.f("pk_run_snapshots")),
    )
    op.create_table(
        "samples",
        *_pair_key(),
        sa.Column("sample_id", sa.String(512), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("truth", sa.String(64), nullable=False),
        sa.Column("captions", sa.JSON(), nullable=False),
        sa.Column("image_ref", sa.String(4096), nullable=False),
        sa.Column("image_stored", sa.Boolean(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_samples_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "pair_index", name=op.f("pk_samples")),
        sa.UniqueConstraint("run_id", "sample_id", name=op.f("uq_samples_run_id_sample_id")),
        postgresql_partition_by="LIST (run_id)",
    )
    op.create_index("ix_samples_run_id_split", "samples", ["run_id", "split", "pair_index"])
    op.create_table(
        "embedding_points",
        *_pair_key(),
        sa.Column("embedding_row", sa.Integer(), nullable=False),
        sa.Column("map_rank", sa.Integer(), nullable=False),
        *(sa.Column(axis, sa.Double(), nullable=False) for axis in MAP_AXES),
        _sample_fk("embedding_points"),
        sa.PrimaryKeyConstraint("run_id", "pair_index", name=op.f("pk_embedding_points")),
        sa.UniqueConstraint("run_id", "embedding_row", name=op.f("uq_embedding_points_run_id_embedding_row")),
        postgresql_partition_by="LIST (run_id)",
    )
    op.create_index("ix_embedding_points_run_id_map_rank", "embedding_points", ["run_id", "map_rank"])
    op.create_table(
        "scores",
        *_pair_key(),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("truth", sa.String(64), nullable=False),
        sa.Column("caption_search", sa.Text(), nullable=False),
        sa.Column("n_captions", sa.Integer(), nullable=False),
        sa.Column("seen_by", sa.String(1), nullable=False),
        *(sa.Column(name, sa.Double(), nullable=nullable) for name, nullable in SCORES),
        sa.Column("views_f", sa.LargeBinary(), nullable=False),
        sa.Column("views_g", sa.LargeBinary(), nullable=False),
        _sample_fk("scores"),
        sa.PrimaryKeyConstraint("run_id", "pair_index", name=op.f("pk_scores")),
        postgresql_partition_by="LIST (run_id)",
    )
    op.create_index("ix_scores_run_id_split", "scores", ["run_id", "split", "pair_index"])
    op.create_index("ix_scores_run_id_truth", "scores", ["run_id", "truth", "pair_index"])
    for name, _ in SCORES:
        op.create_index(f"ix_scores_run_id_{name}", "scores", ["run_id", name, "pair_index"])
    op.create_table(
        "tags",
        *_pair_key(),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _sample_fk("tags"),
        sa.PrimaryKeyConstraint("run_id", "pair_index", "tag", name=op.f("pk_tags")),
    )
    op.create_index("ix_tags_run_id_tag", "tags", ["run_id", "tag", "pair_index"])
    op.create_table(
        "thumbnails",
        *_pair_key(),
        sa.Column("media_type", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        _sample_fk("thumbnails"),
        sa.PrimaryKeyConstraint("run_id", "pair_index", name=op.f("pk_thumbnails")),
    )


def downgrade() -> None:
    for table in ("thumbnails", "tags", "scores", "embedding_points", "samples", "run_snapshots", "embedding_blocks",
                  "runs"):
        op.drop_table(table)
