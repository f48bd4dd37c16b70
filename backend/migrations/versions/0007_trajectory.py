"""CLIPMem over training time (issue 19): each pair's scores after the tracked epochs, and their summaries.

`trajectory_points` holds trajectory.parquet: per pair and tracked epoch A_f, A_g and the raw scores, for the scored
pairs (null null_for) and the S_E null pairs (one row per null key). With a few rows per pair and epoch it is one
table with a surrogate key and a (run, pair, epoch) index, the order a pair's trajectory is read in. `scores` gains
the per-pair summaries mem_epoch, mem_auc and mem_variability (nullable: runs trained without --track-epochs have
none; no index, as nothing filters or sorts by them), `runs.tracked_epochs` the tracked epochs (null when none).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# frozen copy of the columns this revision adds to `scores`
DYNAMICS_SCORES = ("mem_epoch", "mem_auc", "mem_variability")


def upgrade() -> None:
    # plain ADD COLUMN, not a batch: a batch would copy `scores` (every run's rows) on SQLite
    for name in DYNAMICS_SCORES:
        op.add_column("scores", sa.Column(name, sa.Double(), nullable=True))
    op.add_column("runs", sa.Column("tracked_epochs", sa.JSON(), nullable=True))
    op.create_table(
        "trajectory_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("pair_index", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("null_for", sa.String(16), nullable=True),
        sa.Column("align_f", sa.Double(), nullable=False),
        sa.Column("align_g", sa.Double(), nullable=False),
        sa.Column("clipmem_raw", sa.Double(), nullable=False),
        sa.Column("clipmem_contrastive_raw", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "pair_index"], ["samples.run_id", "samples.pair_index"],
                                name=op.f("fk_trajectory_points_run_id_samples"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trajectory_points")),
    )
    op.create_index("ix_trajectory_points_run_id_pair_index_epoch", "trajectory_points",
                    ["run_id", "pair_index", "epoch"])


def downgrade() -> None:
    # plain DROP COLUMN (SQLite >= 3.35), not a batch: see 0006
    op.drop_index("ix_trajectory_points_run_id_pair_index_epoch", table_name="trajectory_points")
    op.drop_table("trajectory_points")
    op.drop_column("runs", "tracked_epochs")
    for name in reversed(DYNAMICS_SCORES):
        op.drop_column("scores", name)
