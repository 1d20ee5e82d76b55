"""The model registry file: built-ins, overrides and clear errors."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.registry import BUILTINS, KINDS, load_registry


def test_builtins_without_a_file():
    registry = load_registry(None)
    assert registry["tiny"].is_builtin and registry["tiny"].kind == "img2img"


def test_every_kind_has_an_offline_builtin():
    kinds = {alias: spec.kind for alias, spec in load_registry(None).items()}
    assert kinds == {
        "tiny": "img2img",
        "tiny-inpaint": "inpaint",
        "tiny-controlnet": "controlnet-canny",
        "echo": "echo",
        "tiny-upscale": "upscale",
    }
    assert set(kinds.values()) == set(KINDS)
    assert all(spec.is_builtin for spec in BUILTINS.values())


def test_file_sets_kind_scheduler_and_controlnet(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.sd-canny]\nsource = "/models/sd15"\nkind = "controlnet-canny"\n'
        'controlnet = "/models/sd-controlnet-canny"\n'
        'scheduler = "EulerAncestralDiscreteScheduler"\n'
    )
    spec = load_registry(path)["sd-canny"]
    assert (spec.kind, spec.controlnet) == ("controlnet-canny", "/models/sd-controlnet-canny")
    assert spec.scheduler == "EulerAncestralDiscreteScheduler" and not spec.takes_mask


def test_file_adds_aliases_with_defaults(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.sd-turbo]\nsource = "stabilityai/sd-turbo"\ndtype = "float16"\n'
        "steps = 4\nstrength = 0.5\nguidance_scale = 0.0\n"
    )
    registry = load_registry(path)
    assert set(registry) == set(BUILTINS) | {"sd-turbo"}
    spec = registry["sd-turbo"]
    assert (spec.steps, spec.guidance_scale, spec.width) == (4, 0.0, 512)


def test_warm_sizes_follow_the_default_size_once_each(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.sd]\nsource = "a"\nwidth = 512\nheight = 512\n'
        'warm_sizes = ["768x512", "512x512", " 512 x 768 ", "768x512"]\n'
    )
    spec = load_registry(path)["sd"]
    assert spec.served_sizes == [(512, 512), (768, 512), (512, 768)]


@pytest.mark.parametrize(
    "body,message",
    [
        ('[models.x]\nkind = "img2img"\n', "source"),
        ('[models.x]\nsource = "a"\nkind = "video"\n', "kind"),
        ('[models.x]\nsource = "a"\nstepz = 3\n', "unknown keys"),
        ("[models.x\n", "cannot read"),
        ('[models.x]\nsource = "a"\nscheduler = "import os"\n', "scheduler"),
        ('[models.x]\nsource = "a"\ncontrolnet = "b"\n', "controlnet-canny"),
        ('[models.x]\nsource = "a"\nmax_batch = 0\n', "max_batch"),
        ('[models.x]\nsource = "a"\nwarm_sizes = "768x512"\n', "warm_sizes must be a list"),
        ('[models.x]\nsource = "a"\nwarm_sizes = ["768 by 512"]\n', "not WIDTHxHEIGHT"),
        ('[models.x]\nsource = "a"\nwarm_sizes = ["770x512"]\n', "multiples of 8"),
        ('[models.x]\nsource = "a"\nwarm_sizes = ["2048x512"]\n', "within 64..1024"),
        ('[models.x]\nsource = "a"\noptions = { lora_hotswap_rank = 0 }\n', "integer >= 1"),
        ('[models.x]\nsource = "a"\noptions = { lora_hotswap_rank = "32" }\n', "integer >= 1"),
        (
            '[models.x]\nsource = "builtin:echo"\nkind = "echo"\n'
            "options = { lora_hotswap_rank = 8 }\n",
            "takes no adapters",
        ),
    ],
)
def test_bad_registry_is_a_config_error(tmp_path, body, message):
    path = tmp_path / "models.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_registry(path)
