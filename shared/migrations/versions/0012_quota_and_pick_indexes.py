"""quotas: a partial index of each team's unfinished jobs

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UNFINISHED = "status IN ('queued', 'running')"


def upgrade() -> None:
    # max_queued and monthly_images count a team's queued and running jobs at every
    # submission (api/quotas.py, shared/usage.py unfinished_jobs). ix_jobs_team_created
    # would read every job the team ever had; this one holds only the unfinished ones, so
    # the count is an index-only scan of what it counts. (The month's images come from
    # usage_monthly, whose primary key (team_id, month, model) already serves that sum.)
    op.create_index(
        "ix_jobs_team_unfinished",
        "jobs",
        ["team_id"],
        postgresql_where=sa.text(UNFINISHED),
        sqlite_where=sa.text(UNFINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_team_unfinished", table_name="jobs")
