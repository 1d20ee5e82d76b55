"""Key scopes and ``/v1/keys`` through the in-process api on the session's Postgres: an
admin key manages its team's keys and webhooks, a member key submits and reads but gets 403
naming the scope on every management route, and a revoked key answers 401 at once."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.keys import hash_api_key
from shared.models import ApiKey
from shared.teams import KeyScope, create_api_key, ensure_team


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin(session_factory) -> str:
    """An admin key of a team of its own (the session database is shared)."""
    with session_scope(session_factory) as s:
        return create_api_key(s, ensure_team(s, f"keys-api-{uuid.uuid4().hex[:8]}"))


def test_admin_creates_a_member_key_shown_once_and_listed_without_it(client, admin):
    created = client.post("/v1/keys", json={}, headers=auth(admin))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["scope"] == "member", "a key made through the API is a member unless asked"
    assert body["key"].startswith(body["prefix"]) and body["revoked_at"] is None
    assert client.get("/v1/jobs", headers=auth(body["key"])).status_code == 200
    listed = client.get("/v1/keys", headers=auth(admin))
    assert listed.status_code == 200
    keys = {k["id"]: k for k in listed.json()["keys"]}
    assert keys[body["id"]]["scope"] == "member"
    assert len(keys) == 2 and {k["scope"] for k in keys.values()} == {"admin", "member"}
    assert body["key"] not in listed.text and hash_api_key(body["key"]) not in listed.text
    assert set(keys[body["id"]]) == {
        "id",
        "prefix",
        "scope",
        "created_at",
        "last_used_at",
        "revoked_at",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/keys"),
        ("get", "/v1/keys"),
        ("delete", "/v1/keys/{key_id}"),
        ("post", "/v1/webhooks"),
        ("get", "/v1/webhooks"),
        ("get", "/v1/webhooks/secret"),
        ("post", "/v1/webhooks/secret/rotate"),
    ],
)
def test_a_member_key_cannot_manage_keys_or_webhooks(client, admin, session_factory, method, path):
    member = client.post("/v1/keys", json={"scope": "member"}, headers=auth(admin)).json()
    body = {"url": "https://example.com/hook"} if path == "/v1/webhooks" else {}
    kwargs = {"json": body} if method == "post" else {}
    response = client.request(
        method, path.format(key_id=member["id"]), headers=auth(member["key"]), **kwargs
    )
    assert response.status_code == 403, response.text
    assert "scope 'admin'" in response.json()["detail"]
    assert "this key's scope is 'member'" in response.json()["detail"]
    with session_factory() as s:
        rows = s.scalars(select(ApiKey).where(ApiKey.id == uuid.UUID(member["id"]))).all()
    assert [r.revoked_at for r in rows] == [None], "the refused request changed nothing"


def test_revoked_key_answers_401_on_its_very_next_request(client, admin):
    made = client.post("/v1/keys", json={"scope": "admin"}, headers=auth(admin)).json()
    assert made["scope"] == KeyScope.ADMIN
    assert client.get("/v1/keys", headers=auth(made["key"])).status_code == 200  # key read
    assert client.delete(f"/v1/keys/{made['id']}", headers=auth(admin)).status_code == 204
    response = client.get("/v1/jobs", headers=auth(made["key"]))
    assert response.status_code == 401
    listed = {k["id"]: k for k in client.get("/v1/keys", headers=auth(admin)).json()["keys"]}
    assert listed[made["id"]]["revoked_at"] is not None
    assert listed[made["id"]]["last_used_at"] is not None, "its use was recorded"
    again = client.delete(f"/v1/keys/{made['id']}", headers=auth(admin))
    assert again.status_code == 204, "revoking a revoked key changes nothing"


def test_another_teams_key_id_is_404_and_stays_active(client, admin, session_factory):
    with session_scope(session_factory) as s:
        other = create_api_key(s, ensure_team(s, f"keys-other-{uuid.uuid4().hex[:8]}"))
    with session_factory() as s:
        other_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(other)))
    response = client.delete(f"/v1/keys/{other_id}", headers=auth(admin))
    assert response.status_code == 404
    assert client.get("/v1/jobs", headers=auth(other)).status_code == 200
    assert str(other_id) not in client.get("/v1/keys", headers=auth(admin)).text


def test_an_unknown_scope_is_422_naming_the_field(client, admin):
    response = client.post("/v1/keys", json={"scope": "root"}, headers=auth(admin))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "scope"
