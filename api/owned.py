"""Rows a team owns, looked up by id: another team's row reads the same as none (404)."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.models import Team

Row = TypeVar("Row")


def owned_row(
    session: Session,
    model: type[Row],
    row_id: uuid.UUID,
    team: Team,
    what: str,
    *where: ColumnElement[bool],
) -> Row:
    """``model``'s row ``row_id`` if ``team`` owns it (and it meets ``where``), else
    NotFound naming ``what``."""
    table: Any = model  # every owned model has ``id`` and ``team_id`` columns
    row = session.scalar(select(model).where(table.id == row_id, table.team_id == team.id, *where))
    if row is None:
        raise NotFound(f"no {what} {row_id}")
    return row
