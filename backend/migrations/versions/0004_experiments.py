"""Experiments: runs made by `clipmem experiment` record the experiment's name and parameters.

`experiment` (indexed, for `GET /runs?experiment=` and `GET /experiments/{name}`) and `experiment_params`
(the run's experiment.json) are null for every other run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("experiment", sa.String(100), nullable=True))
        batch.add_column(sa.Column("experiment_params", sa.JSON(), nullable=True))
    op.create_index("ix_runs_experiment", "runs", ["experiment"])


def downgrade() -> None:
    op.drop_index("ix_runs_experiment", table_name="runs")
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch: a batch would copy `runs` and drop the
    # old table, and with SQLite's foreign keys on, dropping `runs` deletes every run's rows by cascade
    op.drop_column("runs", "experiment_params")
    op.drop_column("runs", "experiment")
