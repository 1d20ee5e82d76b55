"""jobs: fewer indexes written by each new job (and by each status change)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

LEASED = "lease_expires_at IS NOT NULL"
REVIEWED = "batch_id IS NOT NULL AND review IS NOT NULL"
WAITING = "status = 'queued' AND enqueued_at IS NULL"


def upgrade() -> None:
    # Each index a row is in costs every insert of it and every update that is not HOT: a
    # 10,000-job batch's COPY spent ~15 ms per index on 2 cores (docs/architecture.md,
    # "Control-plane capacity"). A new job is queued, unleased and unreviewed, so:
    # - ix_jobs_dispatch (model, status, enqueued_at, created_at) held every job ever; what
    #   still reads it, the pick's "teams with jobs created since" (dispatch/pick.py TEAMS),
    #   asks only for waiting ones: a partial (model, created_at) of those serves it, and a
    #   job leaves it when it is handed over, so no later update of the row writes it.
    op.drop_index("ix_jobs_dispatch", table_name="jobs")
    op.create_index(
        "ix_jobs_waiting_created",
        "jobs",
        ["model", "created_at"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )
    # - the lease sweeps (expired leases, canceled jobs still leased) ask for
    #   lease_expires_at < now, which only leased rows meet;
    _partial("ix_jobs_lease", ["status", "lease_expires_at"], LEASED)
    # - a batch's review counts and its listing by review state ask for a review state.
    _partial("ix_jobs_batch_review", ["batch_id", "review"], REVIEWED)


def _partial(name: str, columns: list[str], where: str | None) -> None:
    op.drop_index(name, table_name="jobs")
    predicate = None if where is None else sa.text(where)
    op.create_index(name, "jobs", columns, postgresql_where=predicate, sqlite_where=predicate)


def downgrade() -> None:
    _partial("ix_jobs_batch_review", ["batch_id", "review"], "batch_id IS NOT NULL")
    _partial("ix_jobs_lease", ["status", "lease_expires_at"], None)
    op.drop_index("ix_jobs_waiting_created", table_name="jobs")
    op.create_index("ix_jobs_dispatch", "jobs", ["model", "status", "enqueued_at", "created_at"])
