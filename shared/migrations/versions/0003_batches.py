"""batches, idempotency keys, batch columns and indexes on jobs

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Single jobs have no batch: keep them out of the batch indexes.
IN_A_BATCH = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("prompt_count", sa.Integer(), nullable=False),
        sa.Column("variants", sa.Integer(), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    # GET /v1/batches: the team's batches, newest first, keyset-paginated.
    op.create_index("ix_batches_team_created", "batches", ["team_id", "created_at", "id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("team_id", "key", name="uq_idempotency_keys_team_key"),
    )

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("sku", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("prompt_name", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("variant", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "jobs_batch_id_fkey", "batches", ["batch_id"], ["id"], ondelete="CASCADE"
        )
    # GET /v1/batches/{id} counts by status, cancel and retry filter by (batch_id, status);
    # GET /v1/batches/{id}/jobs pages by (batch_id, id).
    op.create_index(
        "ix_jobs_batch_status",
        "jobs",
        ["batch_id", "status"],
        postgresql_where=IN_A_BATCH,
        sqlite_where=IN_A_BATCH,
    )
    op.create_index(
        "ix_jobs_batch_id",
        "jobs",
        ["batch_id", "id"],
        postgresql_where=IN_A_BATCH,
        sqlite_where=IN_A_BATCH,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_id", table_name="jobs")
    op.drop_index("ix_jobs_batch_status", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("jobs_batch_id_fkey", type_="foreignkey")
        batch.drop_column("variant")
        batch.drop_column("prompt_name")
        batch.drop_column("sku")
        batch.drop_column("batch_id")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_batches_team_created", table_name="batches")
    op.drop_table("batches")
