"""LayerMem of a run: per-layer memorization per tower and truth tag, and per-pair curves of the top pairs.

Both are small (blocks x towers x tags, and top-k pairs x blocks), so they live as JSON on the run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("layers", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("layer_curves", sa.JSON(), nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch: a batch would copy `runs` and drop the
    # old table, and with SQLite's foreign keys on, dropping `runs` deletes every run's rows by cascade
    op.drop_column("runs", "layer_curves")
    op.drop_column("runs", "layers")
