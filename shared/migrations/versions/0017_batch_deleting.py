"""batches: deleting_at, the mark of a batch its team deleted

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

DELETING = "deleting_at IS NOT NULL"


def upgrade() -> None:
    # DELETE /v1/batches/{id} answers at once: the batch is marked and reads as gone (404),
    # and what a running job still holds is removed after (the dispatcher's sweep probes
    # this partial index, empty but for batches being deleted).
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("deleting_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_batches_deleting",
        "batches",
        ["deleting_at"],
        postgresql_where=sa.text(DELETING),
        sqlite_where=sa.text(DELETING),
    )


def downgrade() -> None:
    op.drop_index("ix_batches_deleting", table_name="batches")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("deleting_at")
