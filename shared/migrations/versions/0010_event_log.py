"""job events: the append-only log behind the live progress streams

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign keys to jobs or batches: the log is pruned by age on its own schedule
    # (dispatch/), and a row must not make deleting a job cost a lookup here.
    op.create_table(
        "job_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            primary_key=True,
        ),
        sa.Column(
            "team_id", sa.Uuid(), sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # The writing transaction's id on Postgres (NULL on SQLite, whose writers take turns):
        # streams read in (txid, id) order, which never gains a row behind one already read.
        sa.Column("txid", sa.BigInteger(), nullable=True),
    )
    op.create_index(
        "ix_job_events_batch",
        "job_events",
        ["batch_id", "txid", "id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
        sqlite_where=sa.text("batch_id IS NOT NULL"),
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "txid", "id"])
    op.create_index("ix_job_events_team", "job_events", ["team_id", "id"])
    op.create_index("ix_job_events_created", "job_events", ["created_at"])


def downgrade() -> None:
    op.drop_table("job_events")
