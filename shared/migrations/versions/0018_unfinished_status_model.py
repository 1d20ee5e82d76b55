"""jobs: the (status, model) index holds unfinished jobs only

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UNFINISHED = "status IN ('queued', 'running')"


def upgrade() -> None:
    # What reads it asks for queued or running jobs by model (the farm gauges, a model's
    # queue failed when it leaves the registry, its active count for ETAs); finished jobs by
    # model are ix_jobs_model_finished's. Every job ever was in it: at 30 days' retention a
    # 100-GPU farm's 3 billion rows, and an entry more for each success to write. Now it
    # is the size of the live queue, and a job leaves it when it finishes.
    _status_model(UNFINISHED)


def downgrade() -> None:
    _status_model(None)


def _status_model(where: str | None) -> None:
    op.drop_index("ix_jobs_status_model", table_name="jobs")
    predicate = None if where is None else sa.text(where)
    op.create_index(
        "ix_jobs_status_model",
        "jobs",
        ["status", "model"],
        postgresql_where=predicate,
        sqlite_where=predicate,
    )
