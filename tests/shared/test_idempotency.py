"""Pruning expired ``Idempotency-Key`` rows (shared/idempotency.py) on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, select

from shared.idempotency import expiry_cutoff, prune_idempotency_keys
from shared.models import IdempotencyKey, utcnow
from shared.teams import ensure_team

# Far in the past, so no other test's rows fall between these and the cutoffs below.
EPOCH = datetime(2001, 1, 1, tzinfo=UTC)


def add_keys(session_factory, *created: datetime) -> list[uuid.UUID]:
    with session_factory() as s:
        team_id = ensure_team(s, f"prune-{uuid.uuid4().hex[:8]}").id
        rows = [
            IdempotencyKey(
                team_id=team_id,
                key=uuid.uuid4().hex,
                request_hash="0" * 64,
                status_code=202,
                response={},
                created_at=at,
            )
            for at in created
        ]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


def remaining(session_factory, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    with session_factory() as s:
        return set(s.scalars(select(IdempotencyKey.id).where(IdempotencyKey.id.in_(ids))))


def test_prune_deletes_keys_older_than_the_cutoff_and_keeps_the_rest(session_factory):
    old, young = add_keys(session_factory, EPOCH, EPOCH + timedelta(days=2))
    with session_factory() as s:
        deleted = prune_idempotency_keys(s, EPOCH + timedelta(days=1))
        s.commit()
    assert deleted == 1
    assert remaining(session_factory, [old, young]) == {young}


def test_prune_deletes_at_most_limit_rows_oldest_first(session_factory):
    ids = add_keys(session_factory, *(EPOCH + timedelta(hours=h) for h in (3, 1, 2)))
    with session_factory() as s:
        assert prune_idempotency_keys(s, EPOCH + timedelta(days=1), limit=2) == 2
        s.commit()
    assert remaining(session_factory, ids) == {ids[0]}, "the newest of the three stays"
    with session_factory() as s:
        assert prune_idempotency_keys(s, EPOCH + timedelta(days=1), limit=2) == 1
        s.commit()
    assert remaining(session_factory, ids) == set()


def test_prune_at_the_ttl_cutoff_spares_keys_still_in_their_window(session_factory):
    now = utcnow()
    expired, live = add_keys(session_factory, now - timedelta(hours=25), now - timedelta(hours=23))
    with session_factory() as s:
        prune_idempotency_keys(s, expiry_cutoff(24 * 3600))
        s.commit()
    assert remaining(session_factory, [expired, live]) == {live}


def test_created_at_is_indexed_for_pruning(session_factory):
    """Migration 0006: without it every prune scans the whole table."""
    with session_factory() as s:
        indexes = inspect(s.get_bind()).get_indexes("idempotency_keys")
    columns = {i["name"]: i["column_names"] for i in indexes}
    assert columns.get("ix_idempotency_keys_created") == ["created_at"]
