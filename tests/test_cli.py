"""The ``imgfarm`` command as a newcomer and an operator run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, inspect, update
from sqlalchemy.orm import Session

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
    # The session fixture migrated already: it says so rather than nothing at all.
    assert "already at the latest schema" in result.stdout, result.stdout
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


def test_version_and_missing_key_say_what_to_do(tmp_path):
    env = {"IMGFARM_DATA_DIR": str(tmp_path)}
    version = imgfarm("--version", env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("imgfarm 0."), version.stdout
    bare = {k: v for k, v in os.environ.items() if k != "IMGFARM_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "imgfarm", "submit", str(tmp_path), "--prompt", "p"],
        env=bare,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "IMGFARM_API_KEY" in result.stderr and "keys create" in result.stderr


def test_embedded_farm_reuses_its_local_key(tmp_path):
    from imgfarm.embedded import LOCAL_TEAM, local_key
    from shared.migrate import upgrade
    from shared.settings import Settings
    from shared.teams import list_api_keys

    settings = Settings(data_dir=tmp_path)
    upgrade(settings.database_url)
    first = local_key(settings)
    assert local_key(settings) == first, "a second start reuses the saved key"
    assert (tmp_path / "local-api-key").stat().st_mode & 0o077 == 0, "only its owner reads it"
    engine = create_engine(settings.database_url)
    with Session(engine) as session:
        keys = list_api_keys(session, LOCAL_TEAM)
        assert [k.active for k in keys] == [True]
        session.execute(update(ApiKey).values(revoked_at=func.now()))
        session.commit()
    replaced = local_key(settings)
    assert replaced != first, "a revoked saved key is replaced, not reused"
    engine.dispose()
