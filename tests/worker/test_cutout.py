"""Cut-outs for ``mask: "auto"`` (worker/cutout.py): studio's masks against known ones on
generated and real product shots, the segmentation network through rembg's own custom-model
session, and the render path storing and keeping the found mask."""

from __future__ import annotations

import dataclasses
import io
import uuid
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.errors import PermanentRenderError
from shared.images import encode_image, open_rgba
from shared.models import Job
from shared.registry import BUILTINS, ModelSpec
from shared.schemas import RenderParams
from shared.storage import LocalStorage, content_addressed, sha256_hex, source_key
from tests.factories import QUICK_PARAMS, data_url, queued_job
from tests.photos import PRODUCT_SHAPES, coffee_on_white, iou, product_on_white
from tests.services import wait_for
from worker import cutout
from worker.cutout import KEEP, REPAINT, cutout_key, stored_cutout, studio_mask
from worker.masks import keep_mask
from worker.render import found_mask_key, prepare_inputs, prepared_key

MIN_IOU = 0.9
OFF_WHITE = (244, 240, 232)
PARAMS = QUICK_PARAMS


def product(found: Image.Image) -> np.ndarray:
    """The stored convention's product: black (keep)."""
    return np.asarray(found) == KEEP


@pytest.mark.parametrize("background", [(255, 255, 255), OFF_WHITE], ids=["white", "off-white"])
@pytest.mark.parametrize("jpeg_quality", [None, 70], ids=["png", "jpeg70"])
def test_studio_finds_generated_products(background, jpeg_quality) -> None:
    # Five outlines (a hole through a mug's handle, a white label on a sneaker, a pair in two
    # parts), each over a gradient backdrop with a soft contact shadow and sensor noise.
    scores = {}
    for seed, shape in enumerate(PRODUCT_SHAPES):
        image, known = product_on_white(
            shape, background=background, jpeg_quality=jpeg_quality, seed=seed
        )
        found = studio_mask(image)
        assert found.mode == "L" and found.size == image.size
        assert set(np.unique(np.asarray(found))) <= {KEEP, REPAINT}
        scores[shape] = iou(product(found), known)
    assert min(scores.values()) >= MIN_IOU, scores


@pytest.mark.parametrize("background", [(255, 255, 255), OFF_WHITE], ids=["white", "off-white"])
def test_studio_finds_a_photographed_product(background) -> None:
    # A camera's cup and saucer (white rim, metal spoon) on a studio backdrop, as JPEG.
    image, known = coffee_on_white(background, jpeg_quality=85)
    assert iou(product(studio_mask(image)), known) >= MIN_IOU


def test_studio_finds_no_product_in_a_plain_backdrop(tmp_path) -> None:
    storage = LocalStorage(tmp_path, "http://test", "secret")
    plain = Image.new("RGB", (64, 64), (250, 250, 250))
    with pytest.raises(PermanentRenderError, match="no product"):
        stored_cutout(BUILTINS["tiny-inpaint"], storage, "sources/t/x", plain, "studio")
    assert not storage.exists("sources/t/x"), "nothing stored"


# --- the render path: found once, stored, used as a given mask -----------------------------
# (In process and without a pipeline: the end-to-end test renders and checks kept pixels.)

SPEC = BUILTINS["tiny-inpaint"]


@pytest.fixture
def storage(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects", "http://test", "secret")


def auto_job(storage: LocalStorage, image: Image.Image, team: uuid.UUID, **params) -> Job:
    """A queued ``mask: "auto"`` job as the api stores it: source content-addressed, no
    mask key, the cut-out method in its params."""
    data = encode_image(image, "png")
    key = source_key(team, sha256_hex(data))
    storage.put(key, data, "image/png")
    params = {**PARAMS, "seed": 1, "cutout": "studio", **params}
    return queued_job("tiny-inpaint", key, params, team=team, prompt="on a marble counter")


def prepared(storage: LocalStorage, job: Job) -> tuple[str | None, Image.Image | None]:
    """(the mask key the job would record, its keep mask), as prepare() finds them."""
    params = RenderParams(**job.params)
    inputs = prepare_inputs(SPEC, storage, job, params)
    return found_mask_key(SPEC, job, params), inputs.keep


def test_auto_mask_is_found_once_and_used_as_a_given_mask(storage, monkeypatch) -> None:
    image, known = product_on_white("bottle", size=(96, 80), seed=4)
    job = auto_job(storage, image, uuid.uuid4())
    found, keep = prepared(storage, job)
    # stored under the team's sources, keyed by source and method: the prepared cache's key
    key = cutout_key(SPEC, job.team_id, job.source_key, "studio")
    assert found == key and content_addressed(key) and key.startswith(f"sources/{job.team_id}/")
    cache_key = prepared_key(SPEC, job, RenderParams(**job.params))
    assert cache_key is not None and cache_key.mask_key == key
    stored = Image.open(io.BytesIO(storage.get(key)))
    assert stored.size == image.size and iou(product(stored), known) >= MIN_IOU
    # used exactly as a given mask is: the same keep mask at the output size
    given = keep_mask(open_rgba(storage.get(job.source_key)), storage.get(key), 64, 64, "crop")
    assert keep is not None and np.array_equal(np.asarray(keep), np.asarray(given))
    assert 0 < (np.asarray(keep) == 255).mean() < 1

    # Another prompt on the same photo: the stored mask is read back, never found again.
    def found_again(*args: object) -> Image.Image:
        raise AssertionError("cut out twice")

    monkeypatch.setattr(cutout, "find_mask", found_again)
    again = auto_job(storage, image, job.team_id, seed=2)
    assert prepared(storage, again)[0] == key
    # A job that recorded its mask (a rerender) reads it as a given one and records nothing.
    job.mask_key = key
    found, rerendered = prepared(storage, job)
    assert found is None and np.array_equal(np.asarray(rerendered), np.asarray(keep))
    # Another team's job of the same photo gets a mask of its own.
    other = auto_job(storage, image, uuid.uuid4())
    assert found_mask_key(SPEC, other, RenderParams(**other.params)) != key


# --- segmentation: a tiny network through rembg's custom-model session ---------------------
# No weights can be downloaded here: the network is built and exported to ONNX at test time,
# then opened by the worker's own path (options.segmentation_model -> rembg.new_session
# "u2net_custom"), as a real U²-Net file would be. Its weights are set, not trained: minus
# the brightness (rembg's normalisation undone), then a closing (max-pool, min-pool), so a
# product darker than its backdrop scores high, a white label inside it included.

RGB_STD = (0.229, 0.224, 0.225)  # rembg's U²-Net normalisation


@pytest.fixture(scope="module")
def rembg_home(tmp_path_factory) -> Path:
    import torch

    class Darkness(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)
            with torch.no_grad():
                self.conv.weight.copy_(-torch.tensor(RGB_STD).view(1, 3, 1, 1))
                self.conv.bias.zero_()
            self.pool = torch.nn.MaxPool2d(15, stride=1, padding=7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -self.pool(-self.pool(self.conv(x)))

    home = tmp_path_factory.mktemp("rembg")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Darkness().eval(),
            (torch.zeros(1, 3, 320, 320),),
            str(home / "tiny-u2net.onnx"),
            input_names=["input"],
            dynamo=False,
        )
    return home


def segmenting(path: Path) -> ModelSpec:
    return dataclasses.replace(
        SPEC, options={**SPEC.options, "cutout": "segmentation", "segmentation_model": str(path)}
    )


def test_segmentation_finds_generated_products_through_rembg(rembg_home, monkeypatch) -> None:
    monkeypatch.setenv("REMBG_HOME", str(rembg_home))
    spec = segmenting(rembg_home / "tiny-u2net.onnx")
    scores = {}
    for seed, shape in enumerate(PRODUCT_SHAPES):
        image, known = product_on_white(shape, size=(200, 160), seed=seed)
        found = cutout.find_mask(spec, image, "segmentation")
        assert found.mode == "L" and found.size == image.size  # rembg's 320² back to the source's
        assert set(np.unique(np.asarray(found))) <= {KEEP, REPAINT}
        scores[shape] = iou(product(found), known)
    assert min(scores.values()) >= MIN_IOU, scores
    # Its masks are keyed by the file's digest: another network file, another stored mask.
    team, source = uuid.uuid4(), "sources/t/photo"
    key = cutout_key(spec, team, source, "segmentation")
    assert key != cutout_key(spec, team, source, "studio") and content_addressed(key)


def test_segmentation_opens_only_a_file_inside_rembgs_models_folder(
    rembg_home, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "elsewhere"))
    cutout.segmentation_session.cache_clear()
    image, _ = product_on_white("box", size=(64, 64))
    with pytest.raises(PermanentRenderError, match="cannot be opened: model_path must be within"):
        cutout.find_mask(segmenting(rembg_home / "tiny-u2net.onnx"), image, "segmentation")
    cutout.segmentation_session.cache_clear()


# --- end to end: the api, a real worker process, the mask downloadable --------------------

FINAL = ("succeeded", "failed", "canceled")


@pytest.mark.integration
def test_auto_mask_job_end_to_end(client, new_key, start_dispatcher, start_worker) -> None:
    start_dispatcher()
    start_worker("tiny-inpaint")
    headers = {"Authorization": f"Bearer {new_key()}"}
    image, known = product_on_white("sneaker", size=(64, 64), seed=6)
    photo = data_url(encode_image(image, "png"))  # opaque: only the cut-out says what to keep
    body = {
        "model": "tiny-inpaint",
        "prompt": "on a marble counter",
        "image": photo,
        "mask": "auto",
        "steps": 2,
        "strength": 1.0,
        "guidance_scale": 0.0,
    }
    # A batch cuts out all its images or none: the params are the batch's.
    mixed = {**body, "images": [{"image": photo, "mask": "auto"}, {"image": photo}]}
    mixed = {k: v for k, v in mixed.items() if k not in ("image", "mask", "prompt")}
    refused = client.post("/v1/batches", json={**mixed, "prompts": ["a"]}, headers=headers)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "images[1].mask"
    accepted = client.post("/v1/jobs", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    def finished() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["status"] in FINAL else None

    job = wait_for(finished, 180, "the auto-mask job to finish", interval=0.2)
    assert job["status"] == "succeeded", job
    assert job["params"]["cutout"] == "studio"  # the default method, recorded
    mask = Image.open(io.BytesIO(httpx.get(job["mask_url"], timeout=30).content))
    assert mask.size == image.size and iou(product(mask), known) >= MIN_IOU
    out = np.asarray(
        Image.open(io.BytesIO(httpx.get(job["outputs"][0]["url"], timeout=30).content))
    )
    kept = np.asarray(mask) < 128  # 64² in, 64² out: the mask's black is the kept pixels
    assert np.array_equal(out[kept], np.asarray(image)[kept]), "kept pixels bit-identical"
    assert not np.array_equal(out[~kept], np.asarray(image)[~kept]), "background repainted"
    assert job["fidelity"]["kept_pixels_changed"] == 0
    thumb = client.get(f"/v1/jobs/{job_id}/thumbnail?of=mask", headers=headers)
    assert thumb.status_code == 200, thumb.text
