"""Bulk inserts of many rows in one statement: PostgreSQL ``COPY ... FROM STDIN``.

A 10,000-job batch is 10,000 rows in the request that creates it. SQLAlchemy's bulk
``insert(Job)`` sends them as a pipelined executemany (psycopg binds, dumps and sends each
row as its own INSERT): about two thirds of the batch's time on 2 cores. ``COPY`` sends the
rows as one stream the server parses in C, through the session's own connection, so the
rows commit or roll back with the rest of the transaction. SQLite (embedded) has no
``COPY``: there the rows go in one executemany.

Most of a batch's cells repeat: its team, model and time in every row, an image's source in
each of its prompts' and variants' rows. A row is therefore given as ``Cells``, runs of
consecutive columns encoded once (``cells``) and shared by the rows that repeat them: the
COPY stream is then joined from ready text, with no per-cell work left but each row's own
(psycopg's ``write_row`` dumped every cell of every row: 65 ms of a 10,000-job batch).

The rows bypass the ORM (no objects, no ``do_orm_execute``): what hooks the ORM's inserts,
such as api/metrics.py's submitted-jobs counter, must be told by the caller. Columns not
named take their default: the server's on Postgres (``COPY``), the model's on SQLite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, cast

from psycopg import sql
from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from shared.models import Base

# COPY's text format: a backslash escapes the characters that would end a cell or a row
# (PostgreSQL docs, COPY, "Text Format"); \N is NULL.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


class JsonText(str):
    """A JSON column's value already encoded: sent as it is (a batch encodes its jobs' shared
    params once, not 10,000 times)."""


@dataclass(frozen=True, slots=True)
class Cells:
    """The values of consecutive columns, with their COPY text (``cells`` makes both)."""

    values: tuple[Any, ...]
    text: str


def cells(*values: Any) -> Cells:
    """``values`` for consecutive columns, encoded once for every row that shares them."""
    return Cells(values, "\t".join(map(copy_text, values)))


def copy_text(value: Any) -> str:
    """One cell in COPY's text format. JSON columns take a ``JsonText``, dict or list."""
    if value is None:
        return NULL
    if isinstance(value, str):
        if "\x00" in value:  # Postgres text cannot hold it; say which value, not "COPY failed"
            raise ValueError(f"a NUL character cannot be stored: {value[:40]!r}")
        return value.translate(_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float | uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return copy_text(json.dumps(value))
    raise TypeError(f"no COPY text for {type(value).__name__}")


def insert_rows(
    session: Session,
    model: type[Base],
    columns: Sequence[str],
    rows: Sequence[Sequence[Cells]],
) -> int:
    """Insert ``rows`` (each a sequence of ``Cells`` covering ``columns`` in order) into
    ``model``'s table in the session's transaction. Returns the count."""
    if not rows:
        return 0
    table = cast(Table, model.__table__)
    if session.get_bind().dialect.name != "postgresql":
        decoded = [
            dict(
                zip(columns, map(_decoded, chain.from_iterable(c.values for c in row)), strict=True)
            )
            for row in rows
        ]
        session.connection().execute(insert(table), decoded)  # Core: no ORM hooks either
        return len(rows)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    driver = session.connection().connection.driver_connection
    assert driver is not None  # a live connection: session.connection() just checked it out
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in _chunks(rows, 1000):
            copy.write("".join(_line(row) for row in chunk).encode())
    return len(rows)


def _line(row: Sequence[Cells]) -> str:
    return "\t".join([c.text for c in row]) + "\n"


def _chunks(rows: Sequence[Sequence[Cells]], size: int) -> Iterable[Sequence[Sequence[Cells]]]:
    # Sent as it is built, a few hundred KB at a time: the server parses while Python joins.
    return (rows[at : at + size] for at in range(0, len(rows), size))


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, JsonText) else value
