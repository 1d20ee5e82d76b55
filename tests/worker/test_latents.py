"""img2img and ControlNet img2img encode a batch in one VAE call, with the same latents
diffusers draws item by item from each job's own generator (worker/latents.py)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image

from shared.canny import canny_edges
from shared.models import Job
from shared.registry import BUILTINS
from shared.schemas import RenderParams
from shared.settings import Settings
from worker.latents import batch_vae_encode
from worker.pipelines import load_model
from worker.render import RenderItem, run_pipeline

PARAMS = {"strength": 0.75, "steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64}


def item(seed: int, controlnet: bool) -> RenderItem:
    rng = np.random.default_rng(seed)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    params = RenderParams(**PARAMS, seed=seed, output_format="png")
    job = Job(
        id=uuid.uuid4(),
        team_id=uuid.uuid4(),
        model="m",
        prompt=f"a sneaker, take {seed}",
        negative_prompt=None,
        params=params.model_dump(),
        source_key="unused",
    )
    control = canny_edges(source, 100, 200) if controlnet else None
    return RenderItem(job=job, params=params, source=source, control=control)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("latents")


@pytest.mark.parametrize("alias", ["tiny", "tiny-controlnet"])
def test_batch_is_encoded_once_with_the_latents_diffusers_draws_per_item(
    alias, data_dir, monkeypatch
):
    model = load_model(BUILTINS[alias], Settings(data_dir=data_dir), warm=False)
    items = [item(seed, alias == "tiny-controlnet") for seed in (3, 1, 4, 1)]
    batch_sizes: list[int] = []
    encode = model.pipe.vae.encode

    def counting_encode(pixels, *args, **kwargs):
        batch_sizes.append(pixels.shape[0])
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(model.pipe.vae, "encode", counting_encode)
    ours = [np.asarray(i, dtype=np.int16) for i in run_pipeline(model, items)]
    assert batch_sizes == [4], "one VAE encode for the whole batch"

    batch_sizes.clear()
    del model.pipe.__dict__["prepare_latents"]  # diffusers' own item-by-item path
    theirs = [np.asarray(i, dtype=np.int16) for i in run_pipeline(model, items)]
    assert batch_sizes == [1, 1, 1, 1]
    # Same random draws; only the encode's float sums differ (batched vs batch-1 kernels).
    for a, b in zip(ours, theirs, strict=True):
        assert np.abs(a - b).max() <= 2
    assert not np.array_equal(ours[0], ours[1]), "each item keeps its own seed"


def test_only_img2img_style_pipelines_are_patched_and_only_once(data_dir):
    inpaint = load_model(BUILTINS["tiny-inpaint"], Settings(data_dir=data_dir), warm=False)
    assert batch_vae_encode(inpaint.pipe) is False
    assert "prepare_latents" not in inpaint.pipe.__dict__
    tiny = load_model(BUILTINS["tiny"], Settings(data_dir=data_dir), warm=False)
    patched = tiny.pipe.prepare_latents
    assert batch_vae_encode(tiny.pipe) is True
    assert tiny.pipe.prepare_latents is patched, "a second call does not wrap it again"
