"""Partial indexes on the optional score columns: leave out the nulls.

Runs scored without the per-tower and encoder-swap scores hold nulls in those six columns; a full
(run, score, pair) index still stores an entry per pair for each (about 84 MB on a million pairs). The
partial indexes hold only non-null values. On PostgreSQL the index on the partitioned `scores` table is
partial, and every run partition attached by ingest gets a partial index of the same definition.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# frozen copy of the nullable score columns at this revision
OPTIONAL_SCORES = ("mem_image", "mem_text", "mem_image_raw", "mem_text_raw", "mem_swap_text", "mem_swap_image")


def _create(name: str, partial: bool) -> None:
    where = {"postgresql_where": sa.column(name).is_not(None),
             "sqlite_where": sa.column(name).is_not(None)} if partial else {}
    op.create_index(f"ix_scores_run_id_{name}", "scores", ["run_id", name, "pair_index"], **where)


def upgrade() -> None:
    for name in OPTIONAL_SCORES:
        op.drop_index(f"ix_scores_run_id_{name}", table_name="scores")
        _create(name, partial=True)


def downgrade() -> None:
    for name in OPTIONAL_SCORES:
        op.drop_index(f"ix_scores_run_id_{name}", table_name="scores")
        _create(name, partial=False)
