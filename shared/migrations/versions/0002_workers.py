"""workers table (heartbeats) and dispatch indexes

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_workers_model", "workers", ["model"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    # The dispatcher's two questions: what is waiting to be handed over (oldest first), and
    # which running jobs' leases have expired.
    op.create_index("ix_jobs_dispatch", "jobs", ["model", "status", "enqueued_at", "created_at"])
    op.create_index("ix_jobs_lease", "jobs", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.drop_index("ix_jobs_dispatch", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
    op.drop_index("ix_workers_model", table_name="workers")
    op.drop_table("workers")
