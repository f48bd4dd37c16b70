"""Why a pair is memorized (issue 18): its `miscaption` score, `reason` and the neighbour signals behind them, and
the neighbours themselves (the evidence).

The new score columns are nullable (runs scored before issue 18 have none) with partial (run, column, pair) indexes
like the other optional scores, so the runs already in the database get no index entries for them; `reason` gets
the same partial index, for its filter. `pair_neighbours` holds neighbours.parquet: per scored pair, kind (image,
caption) and rank, the neighbouring pair and two cosines. It has about ten rows per scored pair, so on PostgreSQL it
is partitioned by run like the other per-pair tables (ingest attaches a run's rows as a partition of their own);
its primary key (run, pair, kind, rank) is the index the evidence endpoint reads. `runs.n_neighbours` counts a
run's rows in it (0 for runs without neighbours).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# frozen copy of the columns this revision adds to `scores`
WHY_SCORES = ("miscaption", "image_neighbour_sim", "caption_neighbour_sim", "neighbour_agreement",
              "neighbour_caption_margin")
REASON = "reason"


def _partial_index(name: str) -> None:
    op.create_index(f"ix_scores_run_id_{name}", "scores", ["run_id", name, "pair_index"],
                    postgresql_where=sa.column(name).is_not(None), sqlite_where=sa.column(name).is_not(None))


def upgrade() -> None:
    # not batch_alter_table: on SQLite a batch would copy `scores` (every run's rows) to add a nullable column
    for name in WHY_SCORES:
        op.add_column("scores", sa.Column(name, sa.Double(), nullable=True))
    op.add_column("scores", sa.Column(REASON, sa.String(32), nullable=True))
    for name in (*WHY_SCORES, REASON):
        _partial_index(name)
    op.add_column("runs", sa.Column("n_neighbours", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "pair_neighbours",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("pair_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("neighbour_index", sa.Integer(), nullable=False),
        sa.Column("similarity", sa.Double(), nullable=False),
        sa.Column("agreement", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "pair_index"], ["samples.run_id", "samples.pair_index"],
                                name=op.f("fk_pair_neighbours_run_id_samples"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "pair_index", "kind", "rank", name=op.f("pk_pair_neighbours")),
        postgresql_partition_by="LIST (run_id)",
    )


def _forget_why_scores() -> None:
    """Take the dropped columns out of each run's score_names (the API reads every listed column) and the reason
    counts out of its summary (they say the run has reasons)."""
    runs = sa.table("runs", sa.column("id", sa.Integer()), sa.column("score_names", sa.JSON()),
                    sa.column("summary", sa.JSON()))
    conn = op.get_bind()
    for run_id, names, summary in conn.execute(sa.select(runs.c.id, runs.c.score_names, runs.c.summary)).all():
        kept = [name for name in names if name not in WHY_SCORES]
        if kept != names or "reasons" in summary:
            summary = {key: value for key, value in summary.items() if key != "reasons"}
            conn.execute(runs.update().where(runs.c.id == run_id).values(score_names=kept, summary=summary))


def downgrade() -> None:
    _forget_why_scores()
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch: a batch would copy the table and drop the
    # old one, and with SQLite's foreign keys on, dropping `runs` deletes every run's rows by cascade. Dropping the
    # partitioned table drops every run's partition of it (PostgreSQL).
    op.drop_table("pair_neighbours")
    op.drop_column("runs", "n_neighbours")
    for name in (*WHY_SCORES, REASON):
        op.drop_index(f"ix_scores_run_id_{name}", table_name="scores")
    for name in (REASON, *reversed(WHY_SCORES)):
        op.drop_column("scores", name)
