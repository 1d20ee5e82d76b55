"""scheduling: priority in the waiting index; indexes for throughput and deadlines

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WAITING = "status = 'queued' AND enqueued_at IS NULL"
INTERACTIVE = f"{WAITING} AND priority = 'interactive'"
FINISHED = "finished_at IS NOT NULL"
OPEN_DEADLINE = "deadline IS NOT NULL AND completed_at IS NULL"


def upgrade() -> None:
    # A team's waiting jobs are read one priority class at a time, oldest first
    # (dispatch/dispatcher.py): with priority before created_at each probe reads only what it
    # returns. The (model, team_id) prefix still serves the loose scan of waiting teams.
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["model", "team_id", "priority", "created_at"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )
    # The teams with interactive jobs waiting: a loose scan of a small index, however big
    # the backlog of the other classes.
    op.create_index(
        "ix_jobs_waiting_interactive",
        "jobs",
        ["model", "team_id"],
        postgresql_where=sa.text(INTERACTIVE),
        sqlite_where=sa.text(INTERACTIVE),
    )
    # Observed throughput per model: the jobs finished in the last minutes (shared/throughput.py).
    op.create_index(
        "ix_jobs_model_finished",
        "jobs",
        ["model", "finished_at"],
        postgresql_where=sa.text(FINISHED),
        sqlite_where=sa.text(FINISHED),
    )
    # Batches whose deadline may still raise their urgency.
    op.create_index(
        "ix_batches_open_deadline",
        "batches",
        ["model", "deadline"],
        postgresql_where=sa.text(OPEN_DEADLINE),
        sqlite_where=sa.text(OPEN_DEADLINE),
    )


def downgrade() -> None:
    op.drop_index("ix_batches_open_deadline", table_name="batches")
    op.drop_index("ix_jobs_model_finished", table_name="jobs")
    op.drop_index("ix_jobs_waiting_interactive", table_name="jobs")
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["model", "team_id", "created_at"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )
