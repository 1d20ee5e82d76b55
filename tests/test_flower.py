"""``imgfarm flower`` refuses to serve without auth unless local-only, and never puts the
password on its command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from imgfarm.flower import flower_config, parse_basic_auth
from shared.errors import ConfigError
from shared.settings import Settings


def test_refuses_to_start_without_auth():
    with pytest.raises(ConfigError, match="IMGFARM_FLOWER_BASIC_AUTH.*--local-only"):
        flower_config(Settings(), port=5555)


def test_local_only_binds_loopback_without_auth():
    config = flower_config(Settings(), port=5555, local_only=True)
    assert config.address == "127.0.0.1" and config.basic_auth == ()
    with pytest.raises(ConfigError, match="--local-only"):
        flower_config(Settings(), port=5555, local_only=True, address="0.0.0.0")


def test_credentials_stay_off_the_command_line():
    settings = Settings(flower_basic_auth=SecretStr("ops:s3cret-pass,viewer:other-pass"))
    config = flower_config(settings, port=5600, inspect_timeout=0.25)
    assert config.basic_auth == ("ops:s3cret-pass", "viewer:other-pass")
    argv = config.argv()
    assert not any("s3cret" in a or "other-pass" in a for a in argv)
    assert "--port=5600" in argv and "--inspect_timeout=250" in argv
    assert "--read_only=True" in argv, "read-only unless --allow-control"
    assert any(a.startswith("--tasks_columns=") and "args" in a for a in argv)


@pytest.mark.parametrize("value", ["ops", "ops:", ":pw", " , "])
def test_malformed_basic_auth_is_refused(value):
    with pytest.raises(ConfigError, match="IMGFARM_FLOWER_BASIC_AUTH"):
        parse_basic_auth(value)


def test_prod_refuses_the_placeholder_password():
    settings = Settings(
        env="prod",
        secret_key="real-secret",
        flower_basic_auth=SecretStr("admin:change-me-flower-password"),
    )
    with pytest.raises(ConfigError, match="change-me"):
        flower_config(settings, port=5555)


def test_command_exits_with_a_message_without_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFARM_")}
    env["IMGFARM_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "imgfarm", "flower", "--port", "5599"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "IMGFARM_FLOWER_BASIC_AUTH" in result.stderr
