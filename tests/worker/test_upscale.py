"""Upscaling through spandrel: a tiny random-weight ESRGAN saved as safetensors, detected and
loaded by spandrel's own loader, run tiled; and the ``upscale`` knob end to end."""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file

from api.app import create_app
from shared.errors import ConfigError
from shared.models import Job
from shared.presets import Preset
from shared.registry import load_registry, upscaler_of
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.factories import data_url, png_bytes, queued_job
from tests.services import launch_dispatcher, launch_worker, wait_for
from worker import presets as marketplace
from worker.pipelines import LoadedModel, load_model
from worker.render import prepare, render_batch
from worker.tiny import save_tiny_esrgan
from worker.upscale import SpandrelUpscaler, enlarge, method, upscale_learned

FINAL = ("succeeded", "failed", "canceled")


def registry_text(weights: Path) -> str:
    return f"""
[models.up2]
kind = "upscale"
source = "{weights / "x2.pth"}"

[models.echo-up]
kind = "echo"
source = "builtin:echo"
min_size = 16
options = {{ upscaler = "tiny-upscale" }}
"""


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory) -> Path:
    """A 2x tiny ESRGAN as a .pth (the built-in tiny-upscale is the 4x safetensors one)."""
    weights = tmp_path_factory.mktemp("weights")
    state = load_file(save_tiny_esrgan(weights / "x2.safetensors", scale=2))
    torch.save(state, weights / "x2.pth")
    path = weights / "models.toml"
    path.write_text(registry_text(weights))
    return path


@pytest.fixture(scope="module")
def loaded(registry_file, tmp_path_factory) -> dict[str, LoadedModel]:
    """Each alias through the worker's own loading path (load_model, as boot calls it)."""
    registry = load_registry(registry_file)
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    return {
        alias: load_model(
            registry[alias], settings, upscaler=upscaler_of(registry, registry[alias])
        )
        for alias in ("tiny-upscale", "up2", "echo-up")
    }


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@contextmanager
def calls_of(*upscalers: SpandrelUpscaler) -> Iterator[list[list[tuple[int, ...]]]]:
    """The input shape of every forward call each upscaler's network gets meanwhile."""
    shapes: list[list[tuple[int, ...]]] = [[] for _ in upscalers]
    hooks = [
        u.descriptor.model.register_forward_pre_hook(
            lambda _module, args, seen=seen: seen.append(tuple(args[0].shape))
        )
        for u, seen in zip(upscalers, shapes, strict=True)
    ]
    try:
        yield shapes
    finally:
        for hook in hooks:
            hook.remove()


def test_safetensors_weights_are_detected_as_esrgan_and_enlarge_exactly(loaded):
    up4, up2 = loaded["tiny-upscale"].upscaler, loaded["up2"].upscaler
    assert isinstance(up4, SpandrelUpscaler) and isinstance(up2, SpandrelUpscaler)
    assert (up4.architecture, up4.scale, up2.architecture, up2.scale) == ("ESRGAN", 4, "ESRGAN", 2)
    assert loaded["tiny-upscale"].revision != loaded["up2"].revision  # a digest of each file
    source = noise(24, 16)
    assert up4(source).size == (96, 64)
    assert up2(source).size == (48, 32)
    out = np.asarray(up4(source)).astype(int)
    assert out.std() > 5, "the tiny network's output is an image, not a flat grey"
    assert not np.array_equal(out, np.asarray(up4(noise(24, 16, seed=1))))


def test_enlarge_makes_as_many_passes_as_the_factor_needs(loaded):
    up4, up2 = loaded["tiny-upscale"].upscaler, loaded["up2"].upscaler
    assert isinstance(up4, SpandrelUpscaler) and isinstance(up2, SpandrelUpscaler)
    source = noise(20, 12)
    with calls_of(up4, up2) as (calls4, calls2):
        # A 4x model asked for 2x: one pass (80x48), then Lanczos down to 40x24.
        assert enlarge(source, 2, up4).size == (40, 24)
        # A 2x model asked for 4x: two passes, the second on the first's output.
        assert enlarge(source, 4, up2).size == (80, 48)
        assert enlarge(source, 2).size == (40, 24)  # no upscaler: Lanczos alone
        assert upscale_learned(source, 1, up4) is source  # nothing to enlarge
    assert calls4 == [(1, 3, 12, 20)]
    assert calls2 == [(1, 3, 12, 20), (1, 3, 24, 40)]
    assert (method(2, up4), method(2, None)) == ("tiny-upscale", "lanczos")


def test_tiled_output_equals_untiled_at_the_seams_and_tiles_bound_memory(loaded):
    up4 = loaded["tiny-upscale"].upscaler
    assert isinstance(up4, SpandrelUpscaler)
    source = noise(40, 28, seed=3)
    whole = np.asarray(SpandrelUpscaler(up4.name, up4.descriptor, tile=1024)(source)).astype(int)
    tile, overlap = 20, 6
    with calls_of(up4) as (calls,):
        tiled = SpandrelUpscaler(up4.name, up4.descriptor, tile=tile, overlap=overlap)(source)
    # Memory: one call per tile, none larger than a tile and its context.
    assert len(calls) == math.ceil(40 / tile) * math.ceil(28 / tile) == 4
    assert max(max(shape[2:]) for shape in calls) <= tile + 2 * overlap
    # Seams: the output columns and rows either side of each tile border, then everywhere.
    cols = [b * 4 + d for b in range(tile, 40, tile) for d in (-2, -1, 0, 1)]
    rows = [b * 4 + d for b in range(tile, 28, tile) for d in (-2, -1, 0, 1)]
    diff = np.abs(whole - np.asarray(tiled).astype(int))
    assert max(diff[:, cols].max(), diff[rows, :].max()) <= 1
    assert diff.max() <= 1
    # Without context the borders show: the seam check can fail.
    bare = SpandrelUpscaler(up4.name, up4.descriptor, tile=tile, overlap=0)(source)
    assert np.abs(whole - np.asarray(bare).astype(int))[:, cols].max() > 8


def test_upscale_model_job_and_upscale_knob_store_enlarged_outputs(loaded, tmp_path):
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")

    def job(model: str, **params: object) -> Job:
        key = f"sources/{uuid.uuid4()}"
        storage.put(key, png_bytes(40, 40), "image/png")
        base = {"strength": 1.0, "steps": 1, "guidance_scale": 0.0, "seed": 1}
        base |= {"width": 32, "height": 32, "output_format": "png"}
        return queued_job(model, key, base | params)

    up4 = "tiny-upscale"
    cases = [(up4, {}, (128, 128), up4), (up4, {"upscale": 2}, (64, 64), up4)]
    cases += [("echo-up", {"upscale": 4}, (128, 128), up4), ("echo-up", {}, (32, 32), None)]
    for alias, params, size, upscaler in cases:
        model = loaded[alias]
        (result,) = render_batch(
            model, storage, [prepare(model, storage, job(alias, **params))], worker="w"
        )
        (output,) = result.outputs
        assert (output["width"], output["height"]) == size, (alias, params)
        assert Image.open(storage._path(output["key"])).size == size
        assert result.provenance["upscaler"] == upscaler


def test_a_scene_preset_larger_than_the_render_is_enlarged_by_the_learned_upscaler(
    loaded, tmp_path
):
    """A preset frame over the render's size starts from the render as the worker's learned
    upscaler enlarged it on the device lane, not from Lanczos alone."""
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    hero = Preset(name="hero", label="Hero", width=96, height=64, format="png")
    key = f"sources/{uuid.uuid4()}"
    storage.put(key, png_bytes(40, 40), "image/png")
    params = {"strength": 1.0, "steps": 1, "guidance_scale": 0.0, "seed": 1, "width": 32}
    params |= {"height": 32, "output_format": "png", "presets": ["hero"]}
    job = queued_job("echo-up", key, params)
    model = loaded["echo-up"]
    item = prepare(model, storage, job)
    with calls_of(model.upscaler) as (calls,):
        (result,) = render_batch(model, storage, [item], worker="w", presets={"hero": hero})
    assert calls == [(1, 3, 32, 32)], "one 4x pass of the 32 px render, for the 96 px frame"
    render, framed = (Image.open(storage._path(o["key"])) for o in result.outputs)
    assert render.size == (32, 32) and framed.size == (96, 64)
    learned = marketplace.reframe(hero, render.convert("RGB"), model.upscaler)
    lanczos = marketplace.reframe(hero, render.convert("RGB"), None)
    got = np.asarray(framed.convert("RGB"))
    assert np.array_equal(got, np.asarray(learned))
    assert not np.array_equal(got, np.asarray(lanczos))


def test_registry_refuses_what_spandrel_could_not_load(tmp_path):
    path = tmp_path / "models.toml"
    bad = {
        'kind = "upscale"\nsource = "/weights/realesrgan"': "weights file",
        'kind = "echo"\nsource = "builtin:echo"\noptions = { upscaler = "tiny" }': "upscale-kind",
        'kind = "echo"\nsource = "builtin:echo"\noptions = { upscaler = "nope" }': "upscale-kind",
    }
    for table, complaint in bad.items():
        path.write_text(f"[models.x]\n{table}\n")
        with pytest.raises(ConfigError, match=complaint):
            load_registry(path)


@pytest.mark.integration
def test_upscale_job_through_a_worker_downloads_at_twice_the_size(
    settings, registry_file, new_key, spawn
):
    env = {"IMGFARM_MODELS": str(registry_file)}
    launch_dispatcher(spawn, env=env)
    launch_worker(spawn, "echo-up", env=env)
    headers = {"Authorization": f"Bearer {new_key()}"}
    body = {
        "model": "echo-up",
        "prompt": "a red sneaker",
        "image": data_url(png_bytes(64, 64)),
        "width": 64,
        "height": 48,
        "upscale": 2,
    }
    with TestClient(create_app(settings.model_copy(update={"models": registry_file}))) as client:
        accepted = client.post("/v1/jobs", json=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        url = f"/v1/jobs/{accepted.json()['id']}"
        job = wait_for(
            lambda: (j := client.get(url, headers=headers).json())["status"] in FINAL and j,
            120,
            "the upscale job to finish",
            interval=0.2,
        )
    assert job["status"] == "succeeded", job
    (output,) = job["outputs"]
    assert (output["width"], output["height"]) == (128, 96)
    downloaded = Image.open(io.BytesIO(httpx.get(output["url"], timeout=30).content))
    assert downloaded.size == (128, 96)
    assert job["provenance"]["upscaler"] == "tiny-upscale"
