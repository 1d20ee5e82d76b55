"""The migrations build exactly the schema the models declare, on Postgres and SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Index, create_engine, text

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


def test_postgres_partial_indexes_have_the_models_predicates(settings):
    """Alembic's comparison leaves index predicates out: each partial index of the models is
    built again on a scratch copy of its table, and Postgres's own rendering of the two
    predicates must agree (a full index where the models declare a partial one fails)."""
    engine = create_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            mismatched = [
                (index.name, declared, built)
                for table in Base.metadata.sorted_tables
                for index in table.indexes
                if (declared := _declared(conn, table.name, index)) is not None
                and declared != (built := _predicate(conn, index.name))
            ]
            conn.rollback()  # the scratch tables go with it
    finally:
        engine.dispose()
    assert mismatched == []


def _declared(conn: Connection, table: str, index: Index) -> str | None:
    """The models' predicate of ``index``, as Postgres renders it; None for a full index."""
    where = index.dialect_options["postgresql"]["where"]
    if where is None:
        return None
    scratch = f"scratch_{table}"
    conn.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {scratch} (LIKE {table})"))
    columns = ", ".join(c.name for c in index.columns)
    name = f"scratch_{index.name}"
    conn.execute(text(f"CREATE INDEX {name} ON {scratch} ({columns}) WHERE {where}"))
    return _predicate(conn, name)


def _predicate(conn: Connection, index_name: str) -> str | None:
    return conn.execute(
        text(
            "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :name"
        ),
        {"name": index_name},
    ).scalar()
