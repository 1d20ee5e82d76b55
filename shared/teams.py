"""Teams and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.keys import display_prefix, hash_api_key, new_api_key
from shared.models import ApiKey, Team


def ensure_team(session: Session, name: str) -> Team:
    """The team called ``name``, created if it does not exist yet."""
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def create_api_key(session: Session, team: Team) -> str:
    """A new key for ``team``; the caller must show it now, it is never stored in clear."""
    key = new_api_key()
    session.add(ApiKey(team_id=team.id, key_hash=hash_api_key(key), prefix=display_prefix(key)))
    session.flush()
    return key


def team_for_key(session: Session, key: str) -> Team | None:
    """The team owning an unrevoked ``key``, or None."""
    return session.scalar(
        select(Team)
        .join(ApiKey, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )
