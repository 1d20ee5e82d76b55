"""Engines and sessions. SQLite (embedded) and PostgreSQL run the same models and queries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, make_url, select
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine tuned for the farm: pre-ping on Postgres, WAL and busy timeout on SQLite."""
    if database_url.startswith("sqlite"):
        _make_sqlite_folder(database_url)
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if "options" not in make_url(database_url).query:  # an operator's own options win
        # No JIT: it compiles plans the planner guesses costly, and the farm's queries are
        # all short (the dispatcher's pick once crossed jit_above_cost and spent ~20 ms
        # compiling a ~1 ms query). Set per connection, not with a SET in every transaction.
        kwargs["connect_args"] = {"options": "-c jit=off", **kwargs.get("connect_args", {})}
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
    return create_engine(database_url, **kwargs)


def _make_sqlite_folder(database_url: str) -> None:
    database = make_url(database_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The embedded stack has an api and a worker process writing one file: WAL lets
    # readers go on while one writes, and busy_timeout waits instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error.

    Reads go through it too, not through a bare ``with factory() as session`` (whose close
    rolls back): psycopg answers every ROLLBACK with DEALLOCATE ALL, so each read ended that
    way cost its pooled connection the prepared statements of the farm's hot queries, and
    Postgres parsed and planned them afresh (pg_stat_statements: plans = calls). A COMMIT
    ends a read as cheaply and keeps them."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def delete_oldest(session: Session, model: Any, older_than: Any, limit: int) -> int:
    """Delete up to ``limit`` rows of ``model`` created before ``older_than``, oldest first
    (``model`` has ``id`` and an indexed ``created_at``); returns how many. Bounded, so a
    housekeeping loop deletes in chunks that never hold locks for long."""
    oldest = (
        select(model.id)
        .where(model.created_at < older_than)
        .order_by(model.created_at)
        .limit(limit)
    )
    result = session.execute(
        delete(model)
        .where(model.id.in_(oldest.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]
