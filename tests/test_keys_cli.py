"""``imgfarm keys list`` and ``imgfarm keys revoke`` as an operator runs them, against the
session's PostgreSQL database, and what the API answers a revoked key."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from imgfarm.cli import main
from shared.db import session_scope
from shared.keys import hash_api_key
from shared.models import ApiKey
from shared.teams import ensure_team


@pytest.fixture
def cli(settings_env):
    """Run ``imgfarm ARGS...`` in-process with the session's IMGFARM_* environment."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), env=settings_env, catch_exceptions=False)

    return run


@pytest.fixture
def team() -> str:
    # The session database is shared: every test lists and revokes in a team of its own.
    return f"keys-{uuid.uuid4().hex[:8]}"


def stored(session_factory, key: str) -> ApiKey:
    with session_factory() as s:
        return s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).one()


def models(client, key: str) -> int:
    return client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_list_shows_one_line_per_key_with_its_prefix_never_the_key(
    cli, new_key, team, session_factory
):
    first, second = new_key(team), new_key(team)
    result = cli("keys", "list", "--team", team)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "ID",
        "TEAM",
        "PREFIX",
        "SCOPE",
        "CREATED",
        "LAST",
        "USED",
        "REVOKED",
    ]
    assert len(rows) == 2
    for key, row in zip((first, second), rows, strict=True):  # oldest first
        row_key = stored(session_factory, key)
        assert row.split() == [
            str(row_key.id),
            team,
            row_key.prefix,
            "admin",
            row_key.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "never",
            "active",
        ]
        assert key not in result.output and row_key.key_hash not in result.output


def test_list_json_gives_scripts_every_field_and_the_revocation(
    cli, new_key, team, session_factory
):
    kept, gone = new_key(team), new_key(team)
    gone_id = str(stored(session_factory, gone).id)
    assert cli("keys", "revoke", gone_id).exit_code == 0
    result = cli("keys", "list", "--team", team, "--json")
    assert result.exit_code == 0, result.output
    listed = {k["id"]: k for k in json.loads(result.stdout)}
    kept_id = str(stored(session_factory, kept).id)
    assert set(listed) == {kept_id, gone_id}
    assert listed[kept_id]["status"] == "active" and listed[kept_id]["revoked_at"] is None
    assert listed[gone_id]["status"] == "revoked" and listed[gone_id]["revoked_at"]
    assert listed[gone_id]["team"] == team
    assert listed[gone_id]["prefix"] == gone[:10]
    assert set(listed[gone_id]) == {
        "id",
        "team",
        "prefix",
        "scope",
        "created_at",
        "revoked_at",
        "last_used_at",
        "status",
    }


def test_list_of_an_unknown_team_is_an_error_not_an_empty_list(cli):
    result = cli("keys", "list", "--team", "no-such-team-anywhere")
    assert result.exit_code != 0
    assert "no team named 'no-such-team-anywhere'" in result.stderr


def test_revoked_key_gets_401_at_once_and_the_teams_other_key_still_works(
    cli, client, new_key, team, session_factory
):
    old, new = new_key(team), new_key(team)
    assert models(client, old) == 200
    result = cli("keys", "revoke", str(stored(session_factory, old).id))
    assert result.exit_code == 0, result.output
    assert "revoked key" in result.stdout
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {old}"})
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert models(client, new) == 200


def test_revoke_by_display_prefix(cli, client, new_key, session_factory):
    key = new_key()
    prefix = stored(session_factory, key).prefix
    result = cli("keys", "revoke", prefix)
    assert result.exit_code == 0, result.output
    assert prefix in result.stdout
    assert stored(session_factory, key).revoked_at is not None
    assert models(client, key) == 401


def test_revoke_by_the_start_of_an_id(cli, new_key, session_factory):
    key = new_key()
    key_id = str(stored(session_factory, key).id)
    assert cli("keys", "revoke", key_id[:13]).exit_code == 0
    assert stored(session_factory, key).revoked_at is not None


def test_revoke_by_a_whole_leaked_key(cli, client, new_key, session_factory):
    key = new_key()
    result = cli("keys", "revoke", key)
    assert result.exit_code == 0, result.output
    assert key not in result.output, "the key is never echoed back"
    assert models(client, key) == 401


def test_revoking_twice_says_so_succeeds_and_keeps_the_first_time(cli, new_key, session_factory):
    key = new_key()
    key_id = str(stored(session_factory, key).id)
    assert cli("keys", "revoke", key_id).exit_code == 0
    first = stored(session_factory, key).revoked_at
    again = cli("keys", "revoke", key_id)
    assert again.exit_code == 0, again.output
    assert "already revoked" in again.stdout
    assert stored(session_factory, key).revoked_at == first


def test_unknown_id_is_a_clear_error(cli):
    missing = str(uuid.uuid4())
    result = cli("keys", "revoke", missing)
    assert result.exit_code != 0
    assert f"no API key matches {missing!r}" in result.stderr


def test_ambiguous_prefix_is_refused_listing_the_matches(cli, client, team, session_factory):
    # Two keys whose ids start alike: made by hand, uuid4 would almost never collide.
    shared = uuid.uuid4().hex[:8]
    ids = [uuid.UUID(shared + uuid.uuid4().hex[8:]) for _ in range(2)]
    with session_factory() as s:
        team_id = ensure_team(s, team).id
        for key_id in ids:
            s.add(ApiKey(id=key_id, team_id=team_id, key_hash=uuid.uuid4().hex, prefix="imf_x"))
        s.commit()
    result = cli("keys", "revoke", shared)
    assert result.exit_code != 0
    assert "matches 2 keys" in result.stderr and "nothing revoked" in result.stderr
    for key_id in ids:
        assert str(key_id) in result.stderr
    with session_factory() as s:
        revoked = s.scalars(select(ApiKey.revoked_at).where(ApiKey.id.in_(ids))).all()
    assert revoked == [None, None]


@pytest.mark.parametrize("selector", ["imf_", "imf_ab", "ab"])
def test_too_short_a_selector_is_refused_and_revokes_nothing(
    cli, new_key, session_factory, selector
):
    key = new_key()
    result = cli("keys", "revoke", selector)
    assert result.exit_code != 0
    assert "too short" in result.stderr
    assert stored(session_factory, key).revoked_at is None


def test_last_use_is_recorded_to_the_minute_and_listed(cli, client, new_key, team, session_factory):
    key = new_key(team)
    hashed = hash_api_key(key)

    def last_used() -> datetime | None:
        return stored(session_factory, key).last_used_at

    assert last_used() is None, "a new key was never used"
    assert models(client, key) == 200
    first = last_used()
    assert first is not None
    assert models(client, key) == 200
    assert last_used() == first, "within a minute a request writes nothing"
    with session_scope(session_factory) as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hashed)
            .values(last_used_at=first - timedelta(minutes=5))
        )
    assert models(client, key) == 200
    assert last_used() >= first, "a stale record is refreshed"
    (listed,) = json.loads(cli("keys", "list", "--team", team, "--json").stdout)
    assert listed["last_used_at"] == last_used().isoformat()


@pytest.mark.parametrize(
    ("args", "scope", "keys_status"), [((), "admin", 200), (("--scope", "member"), "member", 403)]
)
def test_keys_create_scope_decides_whether_the_key_manages_keys(
    cli, client, team, session_factory, args, scope, keys_status
):
    result = cli("keys", "create", team, *args)
    assert result.exit_code == 0, result.output
    key = result.stdout.splitlines()[-1]
    assert stored(session_factory, key).scope == scope
    assert f"new {scope} API key" in result.stderr
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200, "both submit and read"
    assert client.get("/v1/keys", headers=headers).status_code == keys_status
    (listed,) = json.loads(cli("keys", "list", "--team", team, "--json").stdout)
    assert listed["scope"] == scope


def test_keys_create_refuses_an_unknown_scope(cli, team):
    result = cli("keys", "create", team, "--scope", "root")
    assert result.exit_code == 2
    assert "--scope" in result.stderr and "'root' is not one of" in result.stderr
