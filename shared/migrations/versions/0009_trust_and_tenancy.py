"""review, fidelity and history of jobs; priorities, deadlines, quotas and key scopes

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # Trust (issue 15): the scores of the output against its source, the review state
        # (passed | needs_review | approved | rejected; NULL until it rendered), who decided
        # and when, and the earlier attempts' outputs kept by a rerender.
        batch.add_column(sa.Column("fidelity", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("review", sa.String(16), nullable=True))
        batch.add_column(sa.Column("review_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("reviewed_at", TS, nullable=True))
        batch.add_column(sa.Column("history", sa.JSON(), nullable=True))
        # Tenancy (issue 17): interactive | standard | bulk.
        batch.add_column(
            sa.Column("priority", sa.String(16), nullable=False, server_default="standard")
        )
    op.create_index(
        "ix_jobs_batch_review",
        "jobs",
        ["batch_id", "review"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
        sqlite_where=sa.text("batch_id IS NOT NULL"),
    )
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("review", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("reviewed_at", TS, nullable=True))
        batch.add_column(
            sa.Column("priority", sa.String(16), nullable=False, server_default="standard")
        )
        batch.add_column(sa.Column("deadline", TS, nullable=True))
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("max_queued", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_batch", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_per_second", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_tokens", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_checked_at", TS, nullable=True))
        batch.add_column(sa.Column("monthly_images", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("retention_days", sa.Integer(), nullable=False, server_default="30")
        )
    with op.batch_alter_table("api_keys") as batch:
        # Keys made before scopes existed keep every right they had.
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="admin"))
    op.create_table(
        "usage_monthly",
        sa.Column("team_id", sa.Uuid(), sa.ForeignKey("teams.id", ondelete="CASCADE")),
        sa.Column("month", sa.String(7)),
        sa.Column("model", sa.String(100)),
        sa.Column("images", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("gpu_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("team_id", "month", "model"),
    )


def downgrade() -> None:
    op.drop_table("usage_monthly")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scope")
    with op.batch_alter_table("teams") as batch:
        for name in (
            "retention_days",
            "monthly_images",
            "rate_checked_at",
            "rate_tokens",
            "rate_per_second",
            "max_batch",
            "max_queued",
            "weight",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("batches") as batch:
        for name in ("deadline", "priority", "reviewed_at", "review"):
            batch.drop_column(name)
    op.drop_index("ix_jobs_batch_review", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in (
            "priority",
            "history",
            "reviewed_at",
            "reviewed_by",
            "review_note",
            "review",
            "fidelity",
        ):
            batch.drop_column(name)
