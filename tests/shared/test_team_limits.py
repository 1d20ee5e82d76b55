"""``set_team_limits``: the one writer of a team's operator-set share and limits."""

from __future__ import annotations

import uuid

import pytest

from shared.models import Team, utcnow
from shared.teams import UnknownTeam, ensure_team, set_team_limits


def test_sets_and_clears_limits_and_a_new_rate_refills_the_bucket(session_factory):
    with session_factory() as s:
        team = ensure_team(s, f"limits-{uuid.uuid4().hex[:8]}")
        team.rate_tokens, team.rate_checked_at = 0.0, utcnow()
        set_team_limits(s, team.id, weight=2.0, max_batch=10, rate_per_second=5.0)
        s.commit()
        set_team_limits(s, team.id, max_batch=None)
        s.commit()
        s.expire_all()
        stored = s.get(Team, team.id)
        assert stored is not None
        assert (stored.weight, stored.max_batch, stored.rate_per_second) == (2.0, None, 5.0)
        assert stored.rate_tokens is None and stored.rate_checked_at is None


def test_refuses_unknown_fields_clearing_a_required_one_and_unknown_teams(session_factory):
    with session_factory() as s:
        team = ensure_team(s, f"limits-{uuid.uuid4().hex[:8]}")
        with pytest.raises(TypeError, match="not team limits: colour"):
            set_team_limits(s, team.id, colour="red")
        with pytest.raises(ValueError, match="weight cannot be cleared"):
            set_team_limits(s, team.id, weight=None)
        with pytest.raises(UnknownTeam):
            set_team_limits(s, uuid.uuid4(), weight=3.0)
