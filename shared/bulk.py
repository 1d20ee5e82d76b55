"""Bulk inserts of many rows in one statement: PostgreSQL ``COPY ... FROM STDIN``.

A 10,000-job batch is 10,000 rows in the request that creates it. SQLAlchemy's bulk
``insert(Job)`` sends them as a pipelined executemany (psycopg binds, dumps and sends each
row as its own INSERT, then the ORM hooks see each row): about two thirds of the batch's
time on 2 cores. ``COPY`` sends the rows as one stream the server parses in C, through the
session's own connection, so the rows commit or roll back with the rest of the
transaction. SQLite (embedded) has no ``COPY``: there the rows go in one executemany.

The rows bypass the ORM (no objects, no ``do_orm_execute``): what hooks the ORM's inserts,
such as api/metrics.py's submitted-jobs counter, must be told by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from psycopg import sql
from sqlalchemy import JSON, Table, insert
from sqlalchemy.orm import Session

from shared.models import Base


class JsonText(str):
    """A JSON column's value already encoded: sent as it is (a batch encodes its jobs' shared
    params once, not 10,000 times)."""


def insert_rows(session: Session, model: type[Base], rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows`` (dicts with the same keys: column names) into ``model``'s table in
    the session's transaction; columns not named take their server default. Returns the
    count."""
    if not rows:
        return 0
    table = cast(Table, model.__table__)
    if session.get_bind().dialect.name != "postgresql":
        decoded = [{k: _decoded(v) for k, v in row.items()} for row in rows]
        session.connection().execute(insert(table), decoded)  # Core: no ORM hooks either
        return len(rows)
    columns = list(rows[0])
    # JSON columns go as their text (COPY's text format takes it as is); the others adapt
    # as psycopg binds them (UUIDs, timestamps, NULLs).
    is_json = [isinstance(table.c[name].type, JSON) for name in columns]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    driver = session.connection().connection.driver_connection
    assert driver is not None  # a live connection: session.connection() just checked it out
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(
                [
                    _json_text(row[name]) if json_column else row[name]
                    for name, json_column in zip(columns, is_json, strict=True)
                ]
            )
    return len(rows)


def _json_text(value: Any) -> str | None:
    # None goes as SQL NULL (a JSON column left unset), not as the JSON text 'null'.
    if value is None or isinstance(value, JsonText):
        return value
    return json.dumps(value)


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, JsonText) else value
