"""Model licences: read from the registry TOML, shown by GET /v1/models, and enforced at
intake for a job or batch that requires commercial use, through the one creation path
(both routes refuse alike, naming ``model``, writing nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from shared.errors import ConfigError
from shared.models import Batch, Job
from shared.registry import load_registry
from tests.factories import data_url, png_bytes

REGISTRY = """
[models.licensed]
source = "builtin:echo"
kind = "echo"
license = "creativeml-openrail-m"
commercial_use = true

[models.research-only]
source = "builtin:echo"
kind = "echo"
license = "sai-nc-community"
commercial_use = false

[models.unsaid]
source = "builtin:echo"
kind = "echo"

# A built-in alias pointed at other weights: their licence is not the farm's.
[models.tiny]
source = "/models/someone-elses-finetune"
"""
SOURCE = data_url(png_bytes())


@pytest.fixture(scope="module")
def licensed_client(settings, tmp_path_factory):
    """The api with a registry file: the same loading path as a deployment's."""
    path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(REGISTRY)
    with TestClient(create_app(settings.model_copy(update={"models": path}))) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def written(session_factory) -> tuple[int, int]:
    with session_factory() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Job, Batch))


def test_models_show_their_licence_and_commercial_use(licensed_client, new_key):
    answer = licensed_client.get("/v1/models", headers=auth(new_key()))
    assert answer.status_code == 200
    shown = {m["alias"]: (m["license"], m["commercial_use"]) for m in answer.json()["models"]}
    assert shown["licensed"] == ("creativeml-openrail-m", True)
    assert shown["research-only"] == ("sai-nc-community", False)
    assert shown["unsaid"] == ("unknown", False)  # nobody promised it: not commercial
    assert shown["tiny-inpaint"] == ("imgfarm-builtin", True)
    assert shown["tiny"] == ("unknown", False)


def test_job_and_batch_requiring_commercial_use_refuse_a_non_commercial_model_alike(
    licensed_client, new_key, session_factory
):
    headers = auth(new_key())
    before = written(session_factory)
    for model in ("research-only", "unsaid"):
        job = {"model": model, "prompt": "a shoe", "image": SOURCE}
        batch = {"model": model, "images": [SOURCE], "prompts": ["a shoe"]}
        refusals = []
        for route, body in (("/v1/jobs", job), ("/v1/batches", batch)):
            answer = licensed_client.post(
                route, json={**body, "require_commercial_use": True}, headers=headers
            )
            assert answer.status_code == 422, answer.text
            (error,) = answer.json()["errors"]
            refusals.append((error["field"], error["message"]))
        assert refusals[0] == refusals[1]
        assert refusals[0][0] == "model" and "not for commercial use" in refusals[0][1]
    assert written(session_factory) == before


def test_commercial_use_is_refused_only_when_required_and_not_allowed(licensed_client, new_key):
    headers = auth(new_key())
    for model, required in (("licensed", True), ("research-only", False)):
        body = {"model": model, "prompt": "a shoe", "image": SOURCE}
        answer = licensed_client.post(
            "/v1/jobs", json={**body, "require_commercial_use": required}, headers=headers
        )
        assert answer.status_code == 202, answer.text
        licensed_client.post(f"/v1/jobs/{answer.json()['id']}/cancel", headers=headers)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('commercial_use = "yes"', "commercial_use must be true or false"),
        ('license = ""', "license must be a non-empty string"),
    ],
)
def test_registry_refuses_a_licence_it_cannot_read(tmp_path: Path, line: str, message: str):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.m]\nsource = "builtin:echo"\nkind = "echo"\n{line}\n')
    with pytest.raises(ConfigError, match=message):
        load_registry(path)
