"""Every route the app serves, walked from ``app.routes`` (a route added later is covered
without editing this file): without an API key it answers 401, and given another team's id
in its path it answers 404, never 403 or the other team's data."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from api.app import create_app
from tests.factories import batch_body, job_body, lora_file, png_bytes

# Public by design, each for its reason: load balancers probe health without a key; the
# API docs describe the routes and hold no data; the console's shell and assets are the
# same static page for everyone (its data comes from /v1 with the key the user pastes);
# /v1/files is a signed link, the signature is its authorization (local storage only).
PUBLIC = {
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/",
    "/batches/new",
    "/batches/{batch_id}",
    "/jobs/{job_id}",
    "/v1/files/{key:path}",
}


def _walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of each endpoint, through included routers; mounts are static files."""
    found: list[tuple[str, str]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # FastAPI's included router keeps its own routes
            context = getattr(route, "include_context", None)
            found += _walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append((method, prefix + route.path))  # type: ignore[attr-defined]
    return found


@pytest.fixture(scope="module")
def app(settings):
    """The app as deployed, save that the test's webhook receiver may be on loopback."""
    return create_app(settings.model_copy(update={"allow_private_networks": "127.0.0.1/32"}))


@pytest.fixture(scope="module")
def routes(app) -> list[tuple[str, str]]:
    return _walk(app.routes)


@pytest.fixture(scope="module")
def guarded(routes) -> list[tuple[str, str]]:
    return [r for r in routes if r[1] not in PUBLIC]


# A valid body for each route that reads one: a route validates its body before it looks
# the id up, so an empty body would be a 422 that hides whether the id is found. A new
# route with a body gets its entry here.
BODIES: dict[tuple[str, str], object] = {
    ("POST", "/v1/jobs/{job_id}/review"): {"decision": "approve"},
    ("POST", "/v1/batches/{batch_id}/review"): {
        "decision": "approve",
        "where": {"review": "passed"},
    },
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: ids[m.group(1)], path)


@pytest.fixture(scope="module")
def owned_ids(app, session_factory) -> dict[str, str]:
    """Real ids of every kind a path names, all owned by one team (an admin key's)."""
    from shared.db import session_scope
    from shared.teams import create_api_key, ensure_team

    with session_scope(session_factory) as s:
        owner = create_api_key(s, ensure_team(s, f"guard-owner-{uuid.uuid4().hex[:8]}"))
    with TestClient(app) as c:
        h = auth(owner)
        job = c.post("/v1/jobs", json=job_body(), headers=h)
        batch = c.post("/v1/batches", json=batch_body(variants=1), headers=h)
        key = c.post("/v1/keys", json={}, headers=h)
        upload = c.post("/v1/uploads", files={"files": ("a.png", png_bytes())}, headers=h)
        hook = c.post(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded"]},
            headers=h,
        )
        adapter = c.post(
            "/v1/adapters",
            data={"name": "guarded"},
            files={"file": ("a.safetensors", lora_file(0))},
            headers=h,
        )
        for answer in (job, batch, key, upload, hook, adapter):
            assert answer.status_code in (200, 201, 202), answer.text
    return {
        "job_id": job.json()["id"],
        "batch_id": batch.json()["id"],
        "key_id": key.json()["id"],
        "upload_id": upload.json()["uploads"][0]["id"],
        "endpoint_id": hook.json()["id"],
        "adapter_name": adapter.json()["name"],
        # No delivery exists yet; an unknown id must be the same 404 as another team's.
        "delivery_id": str(uuid.uuid4()),
    }


def test_the_walk_finds_the_routes_it_must(routes) -> None:
    """Guard against a walk that silently finds nothing (the parametrised test would pass)."""
    paths = {p for _, p in routes}
    for must in ("/v1/jobs/{job_id}", "/v1/batches/{batch_id}/events", "/v1/keys/{key_id}"):
        assert must in paths
    stale = PUBLIC - paths
    assert not stale, f"PUBLIC names routes the app no longer has: {stale}"


def test_every_guarded_route_needs_a_key(app, guarded, owned_ids) -> None:
    """401 without a key and with a made-up key, on every route not public by design."""
    with TestClient(app) as c:
        for method, path in guarded:
            url = _fill(path, owned_ids)
            for headers in ({}, auth("if_" + uuid.uuid4().hex)):
                answer = c.request(method, url, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)


def test_another_teams_ids_are_404(app, guarded, owned_ids, new_key) -> None:
    """An admin key of another team, given the owner's ids, gets 404 on every id route."""
    stranger = auth(new_key())
    with TestClient(app) as c:
        with_ids = [(m, p) for m, p in guarded if "{" in p]
        wrong = []
        assert len(with_ids) >= 15
        for method, path in with_ids:
            body = BODIES.get((method, path), {})
            answer = c.request(method, _fill(path, owned_ids), headers=stranger, json=body)
            if answer.status_code != 404:
                wrong.append((method, path, answer.status_code, answer.text[:200]))
    assert not wrong, wrong


# Managing the team (its keys, webhooks and adapters) needs an admin key; everything else a
# member's (listing the adapters, to name them, included).
ADMIN_ONLY = re.compile(r"^/v1/keys|^/v1/webhooks(?!/deliveries)")
ADMIN_ONLY_ROUTES = {("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/{adapter_name}")}


def test_admin_scope_holds_on_exactly_the_management_routes(app, guarded, owned_ids) -> None:
    """A member key (of a team of its own, so nothing of the owner's changes) gets 403 on
    every management route and on no other."""
    with TestClient(app) as c:
        admin = auth(_admin_key(c))
        member = c.post("/v1/keys", json={"scope": "member"}, headers=admin).json()["key"]
        refused = {
            (method, path)
            for method, path in guarded
            if c.request(method, _fill(path, owned_ids), headers=auth(member), json={}).status_code
            == 403
        }
    expected = {(m, p) for m, p in guarded if ADMIN_ONLY.match(p)} | ADMIN_ONLY_ROUTES
    assert len(expected) >= 10
    assert refused == expected, {"too open": expected - refused, "too closed": refused - expected}


def _admin_key(c: TestClient) -> str:
    from shared.db import session_scope
    from shared.teams import create_api_key, ensure_team

    with session_scope(c.app.state.session_factory) as s:  # type: ignore[attr-defined]
        return create_api_key(s, ensure_team(s, f"guard-member-{uuid.uuid4().hex[:8]}"))
