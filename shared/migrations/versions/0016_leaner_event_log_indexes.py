"""job_events: no team index; the age index a BRIN

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every job transition and every new job writes a row here (a 10,000-job batch, 10,000
    # rows in its request), and each of the log's btrees costs each row. Nothing reads the
    # log by team (streams read by batch or job; live.py's SQLite poller by id), so that one
    # goes. The retention delete (shared/db.py delete_oldest) reads the oldest rows by age:
    # the log is append-only, so created_at follows the rows' physical order and a BRIN
    # (one summary per 128 pages, kept current by autosummarize) finds them for almost
    # nothing per insert. SQLite has no BRIN: there it stays a btree.
    op.drop_index("ix_job_events_team", table_name="job_events")
    op.drop_index("ix_job_events_created", table_name="job_events")
    op.create_index(
        "ix_job_events_created",
        "job_events",
        ["created_at"],
        postgresql_using="brin",
        postgresql_with={"autosummarize": "on"},
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_created", table_name="job_events")
    op.create_index("ix_job_events_created", "job_events", ["created_at"])
    op.create_index("ix_job_events_team", "job_events", ["team_id", "id"])
