"""inpaint masks: the mask image's storage key on jobs

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: only inpaint jobs given a mask have one; every existing job has none.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("mask_key", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("mask_key")
