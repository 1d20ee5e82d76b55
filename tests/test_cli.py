"""The ``imgfarm`` command as a newcomer and an operator run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, inspect

from shared.keys import hash_api_key
from shared.models import ApiKey


def imgfarm(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "imgfarm", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_writes_four_images_on_the_embedded_stack(tmp_path):
    """`imgfarm demo` with no configuration: SQLite, local objects, filesystem broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFARM_")}
    result = subprocess.run(
        [sys.executable, "-m", "imgfarm", "demo", "--out", "out"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [tmp_path / line for line in result.stdout.split()]
    assert len(paths) == 4
    for path in paths:
        assert path.parent == tmp_path / "out"
        assert Image.open(path).size == (64, 64)
    assert (tmp_path / ".imgfarm" / "imgfarm.db").exists(), "embedded state lives in ./.imgfarm"


def test_migrate_then_keys_create_prints_a_working_key(
    settings_env, settings, session_factory, api_server
):
    result = imgfarm("migrate", env=settings_env)
    assert result.returncode == 0, result.stderr
    tables = set(inspect(create_engine(settings.database_url)).get_table_names())
    assert {"teams", "api_keys", "jobs", "uploads", "alembic_version"} <= tables

    result = imgfarm("keys", "create", "acme-cli", env=settings_env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("imf_")
    with session_factory() as s:
        stored = s.query(ApiKey).filter_by(key_hash=hash_api_key(key)).one()
        assert key not in (stored.key_hash, stored.prefix), "the key must never be stored in clear"
    response = httpx.get(f"{api_server}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_worker_refuses_unknown_model_clearly(settings_env):
    result = imgfarm("worker", "--model", "nope", env=settings_env, timeout=120)
    assert result.returncode != 0
    assert "unknown model 'nope'" in result.stderr


@pytest.mark.parametrize("bad", [{"IMGFARM_ENV": "prod"}, {"IMGFARM_LEASE_SECONDS": "x"}])
def test_bad_configuration_is_reported_not_a_traceback(bad, tmp_path):
    result = imgfarm("migrate", env={"IMGFARM_DATA_DIR": str(tmp_path), **bad}, timeout=60)
    assert result.returncode != 0
    assert "bad configuration" in result.stderr and "Traceback" not in result.stderr
