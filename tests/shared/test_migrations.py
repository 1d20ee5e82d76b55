"""The migrations build exactly the schema the models declare, on Postgres and SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from shared.migrate import upgrade
from shared.models import Base


def schema_drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_postgres_schema_matches_the_models(settings):
    # The session database was migrated to head by the test session's fixtures.
    assert schema_drift(settings.database_url) == []


def test_sqlite_schema_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    upgrade(url)
    assert schema_drift(url) == []
