"""hot tables: no foreign keys on jobs and job_events; job ids drawn by Postgres

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# (table, column, referred table): the constraints that go.
DROPPED = (
    ("jobs", "team_id", "teams"),
    ("jobs", "batch_id", "batches"),
    ("job_events", "team_id", "teams"),
)
# SQLite's constraints have no names: batch mode names the reflected ones by this pattern.
SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    # Every row written to jobs and job_events paid one lookup per foreign key, and a FOR KEY
    # SHARE lock on the parent row: half of a 10,000-job batch's COPY, and, on the events
    # every transition logs, one lock on the team row by each of the farm's writers. These
    # tables' rows are written by one owner each (api/batches.py and api/submit.py write a
    # batch and its jobs in one transaction; shared/job_events.py logs changes of rows that
    # exist) and deleted children first (shared/prune.py), so nothing relied on the checks
    # or the cascades. docs/architecture.md, "Control-plane capacity", has the figures.
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    for table, column, referred in DROPPED:
        name = _constraint_name(bind, table, column, referred)
        if postgres:
            op.drop_constraint(name, table, type_="foreignkey")
            continue
        with op.batch_alter_table(table, naming_convention=SQLITE_NAMES) as batch:
            batch.drop_constraint(name, type_="foreignkey")
    if postgres:
        # A bulk insert leaves the id out and Postgres draws it (random, as uuid4 is):
        # 10,000 uuid4() calls and their encoding were a tenth of a batch's submission.
        op.execute("ALTER TABLE jobs ALTER COLUMN id SET DEFAULT gen_random_uuid()")


def _constraint_name(bind: sa.engine.Connection, table: str, column: str, referred: str) -> str:
    """The key's name as the database has it; SQLite's unnamed ones by ``SQLITE_NAMES``."""
    for key in sa.inspect(bind).get_foreign_keys(table):
        if key["constrained_columns"] == [column]:
            return key["name"] or f"fk_{table}_{column}_{referred}"
    raise LookupError(f"{table}.{column} has no foreign key")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("ALTER TABLE jobs ALTER COLUMN id DROP DEFAULT")
    for table, column, referred in DROPPED:
        name = f"{table}_{column}_fkey" if postgres else f"fk_{table}_{column}_{referred}"
        if postgres:
            op.create_foreign_key(name, table, referred, [column], ["id"], ondelete="CASCADE")
            continue
        with op.batch_alter_table(table, naming_convention=SQLITE_NAMES) as batch:
            batch.create_foreign_key(name, referred, [column], ["id"], ondelete="CASCADE")
