"""Settings: embedded defaults, the IMGFARM_ prefix, refusal of dev secrets in prod."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings


def test_embedded_defaults_need_no_server(tmp_path, monkeypatch):
    for key in ("IMGFARM_DATABASE_URL", "IMGFARM_BROKER_URL", "IMGFARM_STORAGE_URL"):
        monkeypatch.delenv(key, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'imgfarm.db'}"
    assert s.broker_url.startswith("filesystem://")
    assert s.storage_url == (tmp_path / "objects").as_uri()


def test_reads_prefixed_environment(monkeypatch):
    monkeypatch.setenv("IMGFARM_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("IMGFARM_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///wrong.db")
    s = Settings()
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.max_attempts == 7


def test_prod_refuses_the_dev_secret(monkeypatch):
    monkeypatch.delenv("IMGFARM_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="IMGFARM_SECRET_KEY"):
        Settings(env="prod")
    assert Settings(env="prod", secret_key="s3cret-from-vault").env == "prod"


def test_private_networks_parsed_from_comma_list():
    s = Settings(allow_private_networks="127.0.0.0/8, 10.0.0.0/8,")
    assert s.private_networks == ["127.0.0.0/8", "10.0.0.0/8"]


def test_bad_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("IMGFARM_LEASE_SECONDS", "soon")
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings()
