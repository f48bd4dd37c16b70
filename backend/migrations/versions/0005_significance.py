"""Significance (issue 15): p- and q-values, view intervals and the replica spread of every scored pair, its
`memorized` flag and the null it is tested against, and each run's measured null.

The new score columns are nullable (runs scored before significance have none) with partial (run, column, pair)
indexes like the other optional scores, so the runs already in the database get no index entries for them.
`runs.null_scores` holds null.parquet's clipmem_raw values by null key. Adding nullable columns rewrites no rows:
plain ALTER TABLE ... ADD COLUMN on SQLite and PostgreSQL (where it reaches every run partition of `scores`,
and an index created on `scores` is created on every partition).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# frozen copy of the columns this revision adds to `scores`
SIGNIFICANCE_SCORES = ("clipmem_p", "clipmem_q", "clipmem_raw_lo", "clipmem_raw_hi", "clipmem_raw_sd",
                       "clipmem_contrastive_p", "clipmem_contrastive_q")
FLAGS = ("memorized",)


def upgrade() -> None:
    # not batch_alter_table: on SQLite a batch would copy `scores` (every run's rows) to add a nullable column
    for name in SIGNIFICANCE_SCORES:
        op.add_column("scores", sa.Column(name, sa.Double(), nullable=True))
    op.add_column("scores", sa.Column("memorized", sa.Boolean(), nullable=True))
    op.add_column("scores", sa.Column("null_for", sa.String(16), nullable=True))
    for name in (*SIGNIFICANCE_SCORES, *FLAGS):
        op.create_index(f"ix_scores_run_id_{name}", "scores", ["run_id", name, "pair_index"],
                        postgresql_where=sa.column(name).is_not(None), sqlite_where=sa.column(name).is_not(None))
    op.add_column("runs", sa.Column("null_scores", sa.JSON(), nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch: a batch would copy the table and drop the
    # old one, and with SQLite's foreign keys on, dropping `runs` deletes every run's rows by cascade
    op.drop_column("runs", "null_scores")
    for name in (*SIGNIFICANCE_SCORES, *FLAGS):
        op.drop_index(f"ix_scores_run_id_{name}", table_name="scores")
    for name in ("null_for", "memorized", *reversed(SIGNIFICANCE_SCORES)):
        op.drop_column("scores", name)
