"""dispatcher: partial indexes over waiting and handed-over jobs

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

WAITING = "status = 'queued' AND enqueued_at IS NULL"
HANDED_OVER = "status = 'queued' AND enqueued_at IS NOT NULL"


def upgrade() -> None:
    # Fair share reads each team's oldest waiting jobs of one model: with this index a probe
    # reads only what it returns (200k queued jobs: 20-56 ms -> under 1 ms per tick).
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["model", "team_id", "created_at"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )
    # The room left in a model's Redis queue and the re-arm of lost messages count or scan
    # only handed-over jobs, a few per worker, instead of the whole queued backlog.
    op.create_index(
        "ix_jobs_handed_over",
        "jobs",
        ["model", "enqueued_at"],
        postgresql_where=sa.text(HANDED_OVER),
        sqlite_where=sa.text(HANDED_OVER),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_handed_over", table_name="jobs")
    op.drop_index("ix_jobs_waiting", table_name="jobs")
