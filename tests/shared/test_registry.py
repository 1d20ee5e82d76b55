"""The model registry file: built-ins, overrides and clear errors."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.registry import load_registry


def test_builtins_without_a_file():
    registry = load_registry(None)
    assert registry["tiny"].is_builtin and registry["tiny"].kind == "img2img"


def test_file_adds_aliases_with_defaults(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.sd-turbo]\nsource = "stabilityai/sd-turbo"\ndtype = "float16"\n'
        "steps = 4\nstrength = 0.5\nguidance_scale = 0.0\n"
    )
    registry = load_registry(path)
    assert set(registry) == {"tiny", "sd-turbo"}
    spec = registry["sd-turbo"]
    assert (spec.steps, spec.guidance_scale, spec.width) == (4, 0.0, 512)


@pytest.mark.parametrize(
    "body,message",
    [
        ('[models.x]\nkind = "img2img"\n', "source"),
        ('[models.x]\nsource = "a"\nkind = "video"\n', "kind"),
        ('[models.x]\nsource = "a"\nstepz = 3\n', "unknown keys"),
        ("[models.x\n", "cannot read"),
    ],
)
def test_bad_registry_is_a_config_error(tmp_path, body, message):
    path = tmp_path / "models.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_registry(path)
