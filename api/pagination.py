"""Cursor pagination for list routes: opaque cursors and keyset pages, newest first.

A cursor is the sort key of the last row of a page, so pages stay stable while rows are
added (no OFFSET that shifts under inserts).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import tuple_
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest


def encode_cursor(*values: object) -> str:
    """An opaque page cursor (the sort key of the last row of the page)."""
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else str(v) for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    """The ``size`` values of a cursor from ``encode_cursor``; 422 naming ``cursor`` if not."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as e:
        raise InvalidRequest("cursor", "is not a cursor from a previous page") from e
    if not isinstance(values, list) or len(values) != size:
        raise InvalidRequest("cursor", "is not a cursor from a previous page")
    return [str(v) for v in values]


def newest_first_page(
    session: Session, query: Any, model: Any, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    """One page of ``query`` (ordered by created_at, id descending, limit + 1) after ``cursor``.

    Keyset pagination: the cursor is the last row's (created_at, id), so pages stay stable
    while rows are added.
    """
    if cursor is not None:
        created, last_id = decode_cursor(cursor, 2)
        try:
            key = (datetime.fromisoformat(created), uuid.UUID(last_id))
        except ValueError as e:
            raise InvalidRequest("cursor", "is not a cursor from a previous page") from e
        query = query.where(tuple_(model.created_at, model.id) < tuple_(*key))
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)
