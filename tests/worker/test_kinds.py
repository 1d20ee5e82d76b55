"""Model kinds on the real tiny pipelines, in process: inpaint, ControlNet canny, echo,
resize modes, batch-size buckets; and the claim/render/store path on Postgres and S3."""

from __future__ import annotations

import dataclasses
import io
import uuid

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from sqlalchemy import select

from shared.canny import canny_edges
from shared.db import session_scope
from shared.images import flatten, open_rgba, resize_image
from shared.models import Job
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage, storage_from_settings
from shared.teams import ensure_team
from tests.factories import QUICK_PARAMS
from worker import accel
from worker.context import WorkerContext
from worker.masks import paste_kept, repaint_mask
from worker.pipelines import (
    LoadedModel,
    batch_buckets,
    load_model,
    uses_cfg,
    warm_model,
    warm_plan,
)
from worker.render import prepare, render_batch, run_pipeline
from worker.tasks import run_render

PARAMS = QUICK_PARAMS  # the kinds, not the step count, are under test


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def models(data_dir):
    """Each built-in loaded once, as a worker does, built on first use. Not warmed: that is
    tested on its own below, and costs seconds per model on a shared CPU."""
    loaded: dict[str, LoadedModel] = {}

    def get(alias: str) -> LoadedModel:
        if alias not in loaded:
            loaded[alias] = load_model(BUILTINS[alias], Settings(data_dir=data_dir), warm=False)
        return loaded[alias]

    return get


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "objects", "http://test", "secret")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Busy pixels, so "kept exactly" cannot pass by accident on a flat colour."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def half_mask(width: int, height: int) -> Image.Image:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, width // 2 - 1, height - 1), fill=255)
    return mask


def cutout(width: int, height: int) -> Image.Image:
    """A product cut-out: an opaque noisy disc on a fully transparent background."""
    img = noise(width, height, seed=3).convert("RGBA")
    alpha = Image.new("L", (width, height), 0)
    ImageDraw.Draw(alpha).ellipse((12, 12, width - 12, height - 12), fill=255)
    img.putalpha(alpha)
    return img


def make_job(
    storage,
    model: str,
    source: bytes,
    *,
    seed: int = 1,
    mask: bytes | None = None,
    prompt: str = "a red sneaker",
    **params,
) -> Job:
    key = f"sources/{uuid.uuid4()}"
    storage.put(key, source, "image/png")
    mask_key = None
    if mask is not None:
        mask_key = f"sources/{uuid.uuid4()}"
        storage.put(mask_key, mask, "image/png")
    return Job(
        id=uuid.uuid4(),
        team_id=uuid.uuid4(),
        model=model,
        prompt=prompt,
        negative_prompt=None,
        params={**PARAMS, "seed": seed, **params},
        source_key=key,
        mask_key=mask_key,
    )


def stored(storage, result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get(result.outputs[0]["key"]))).convert("RGB"))


# --- inpaint ---------------------------------------------------------------------------------


def test_inpaint_keeps_masked_pixels_bit_identical(models, storage):
    model = models("tiny-inpaint")
    source = noise(64, 64)
    job = make_job(storage, "tiny-inpaint", png(source), mask=png(half_mask(64, 64)))
    (result,) = render_batch(model, storage, [prepare(model, storage, job)], worker="w")
    out, src = stored(storage, result), np.asarray(source)
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:, 32:], src[:, 32:]), "black in the mask: kept exactly"
    assert not np.array_equal(out[:, :32], src[:, :32]), "white in the mask: repainted"
    assert result.provenance["kind"] == "inpaint"


def test_inpaint_mask_follows_the_source_through_resizing(models, storage):
    """A 96x80 source and mask, cropped to 64x64: kept pixels equal the resized source's."""
    model = models("tiny-inpaint")
    source = noise(96, 80, seed=5)
    job = make_job(storage, "tiny-inpaint", png(source), mask=png(half_mask(96, 80)))
    item = prepare(model, storage, job)
    (result,) = render_batch(model, storage, [item], worker="w")
    expected = np.asarray(resize_image(source, 64, 64, "crop"))
    keep = np.asarray(item.keep) == 255
    assert keep.any() and not keep.all()
    assert np.array_equal(stored(storage, result)[keep], expected[keep])


def test_alpha_source_keeps_its_opaque_pixels(models, storage):
    model = models("tiny-inpaint")
    source = cutout(64, 64)
    (result,) = render_batch(
        model,
        storage,
        [prepare(model, storage, make_job(storage, "tiny-inpaint", png(source)))],
        worker="w",
    )
    out = stored(storage, result)
    opaque = np.asarray(source.getchannel("A")) == 255
    rgb = np.asarray(source.convert("RGB"))
    assert np.array_equal(out[opaque], rgb[opaque]), "the product is pasted back exactly"
    assert not np.array_equal(out[~opaque], np.full_like(out[~opaque], 255)), "background repainted"


def test_alpha_source_is_flattened_onto_white_for_img2img(models, storage):
    model = models("tiny")
    item = prepare(model, storage, make_job(storage, "tiny", png(cutout(64, 64))))
    assert item.keep is None and item.source.mode == "RGB"
    assert item.source.getpixel((0, 0)) == (255, 255, 255)
    (result,) = render_batch(model, storage, [item], worker="w")
    assert stored(storage, result).shape == (64, 64, 3)


# --- ControlNet canny --------------------------------------------------------------------------


def test_controlnet_conditions_on_the_sources_edges(models, storage):
    model = models("tiny-controlnet")
    item = prepare(model, storage, make_job(storage, "tiny-controlnet", png(cutout(64, 64))))
    assert item.control is not None
    assert np.array_equal(np.asarray(item.control), np.asarray(canny_edges(item.source)))
    assert np.asarray(item.control).any(), "the disc's outline is an edge"
    (same,) = run_pipeline(model, [item])
    (again,) = run_pipeline(model, [item])
    other_edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(other_edges).line((0, 32, 63, 32), fill=(255, 255, 255))
    (other,) = run_pipeline(model, [dataclasses.replace(item, control=other_edges)])
    assert np.array_equal(np.asarray(same), np.asarray(again))
    assert not np.array_equal(np.asarray(same), np.asarray(other)), "other edges, other image"


def test_canny_finds_an_outline_and_nothing_on_flat_colour():
    flat = Image.new("RGB", (32, 32), (90, 90, 90))
    assert not np.asarray(canny_edges(flat)).any()
    square = flat.copy()
    ImageDraw.Draw(square).rectangle((8, 8, 23, 23), fill=(250, 250, 250))
    edges = np.asarray(canny_edges(square).convert("L")) > 0
    assert edges[8:24, 6:10].any() and edges[8:24, 22:26].any()
    assert not edges[12:20, 12:20].any(), "the inside of the square has no edge"


# --- echo and resize modes ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fit", "crop", "pad"])
def test_echo_returns_the_source_at_the_requested_size(models, storage, mode):
    model = models("echo")
    assert model.pipe is None
    source = noise(120, 72, seed=9)
    job = make_job(storage, "echo", png(source), width=96, height=64, resize_mode=mode)
    (result,) = render_batch(model, storage, [prepare(model, storage, job)], worker="w")
    out = stored(storage, result)
    assert out.shape == (64, 96, 3)
    assert np.array_equal(out, np.asarray(resize_image(source, 96, 64, mode)))
    assert result.provenance["kind"] == "echo" and result.provenance["batch_size"] == 1


def test_resize_modes_differ_as_documented():
    source = noise(120, 60)
    fit, crop, pad = (resize_image(source, 64, 64, m) for m in ("fit", "crop", "pad"))
    assert fit.size == crop.size == pad.size == (64, 64)
    pad_px = np.asarray(pad)
    # 120x60 fit inside 64x64 is 64x32, centered: white bands above and below.
    assert (pad_px[:16] == 255).all() and (pad_px[48:] == 255).all()
    assert not np.array_equal(np.asarray(fit), np.asarray(crop))
    assert resize_image(source, 120, 60, "crop").tobytes() == source.tobytes(), "no resampling"


def test_pad_border_is_repainted_by_inpaint(models, storage):
    model = models("tiny-inpaint")
    job = make_job(
        storage,
        "tiny-inpaint",
        png(noise(128, 64)),
        mask=png(Image.new("L", (128, 64))),
        resize_mode="pad",
    )
    item = prepare(model, storage, job)
    keep = np.asarray(item.keep) == 255
    assert not keep[:16].any() and not keep[48:].any(), "the pad is painted (outpainting)"
    assert keep[16:48].all(), "an all-black mask keeps the whole picture"


# --- batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["tiny-inpaint", "tiny-controlnet"])
def test_batched_and_single_renders_agree_in_shape_and_provenance(models, storage, alias):
    """(tiny img2img: tests/worker/test_render.py)"""
    model = models(alias)
    mask = png(half_mask(64, 64)) if alias == "tiny-inpaint" else None
    jobs = [make_job(storage, alias, png(noise(64, 64, s)), seed=s, mask=mask) for s in (1, 2)]
    items = [prepare(model, storage, j) for j in jobs]
    batched = render_batch(model, storage, items, worker="w")
    single = [render_batch(model, storage, [i], worker="w")[0] for i in items]
    for b, s, item in zip(batched, single, items, strict=True):
        assert (b.provenance["batch_size"], s.provenance["batch_size"]) == (2, 1)
        drop = {"batch_size", "render_seconds"}
        assert {k: v for k, v in b.provenance.items() if k not in drop} == {
            k: v for k, v in s.provenance.items() if k not in drop
        }
        b_px, s_px = stored(storage, b), stored(storage, s)
        assert b_px.shape == s_px.shape == (64, 64, 3)
        if item.keep is not None:
            keep = np.asarray(item.keep) == 255
            assert np.array_equal(b_px[keep], s_px[keep])


def test_batch_buckets_are_powers_of_two_and_max_batch():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(4) == (1, 2, 4)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(16) == (1, 2, 4, 8, 16)


def test_compiled_model_pads_to_its_bucket_and_records_it(models, storage):
    """3 jobs on a compiled model run as a batch of 4 (the last repeated, its output
    dropped), with the pixels a real batch of 4 gives them: the determinism contract."""
    eager = models("tiny")
    compiled = dataclasses.replace(eager, compiled=True, buckets=batch_buckets(4))
    jobs = [make_job(storage, "tiny", png(noise(64, 64, s)), seed=s) for s in (1, 2, 3)]
    items = [prepare(eager, storage, j) for j in jobs]
    calls: list[int] = []
    original = eager.pipe.__class__.__call__

    def spy(pipe, *args, **kwargs):
        calls.append(len(kwargs["prompt"]))
        return original(pipe, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eager.pipe.__class__, "__call__", spy)
        results = render_batch(compiled, storage, items, worker="w")
    assert calls == [4] and len(results) == 3
    assert all(r.provenance["batch_size"] == 4 for r in results)
    as_four = run_pipeline(eager, [*items, items[-1]])
    for result, image in zip(results, as_four, strict=False):
        assert np.array_equal(stored(storage, result), np.asarray(image))
    assert [eager.pipeline_batch_size(n) for n in (1, 3)] == [1, 3], "eager: no padding"
    assert [compiled.pipeline_batch_size(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]


def test_warm_up_runs_at_every_bucket_only_when_compiled(models, monkeypatch):
    model = models("tiny-inpaint")
    sizes: list[int] = []

    def fake_warm_up(pipe, **kwargs) -> accel.WarmUpResult:
        sizes.append(kwargs["batch_size"])
        assert len(kwargs["extra_inputs"]["mask_image"]) == kwargs["batch_size"]
        return accel.WarmUpResult(0.0, compiled=accel.is_compiled(pipe))

    monkeypatch.setattr(accel, "warm_up", fake_warm_up)
    assert warm_model(model.pipe, model.spec) == (False, (1,)) and sizes == [1]
    sizes.clear()
    monkeypatch.setattr(accel, "is_compiled", lambda pipe: True)
    spec = dataclasses.replace(model.spec, max_batch=6)
    assert warm_model(model.pipe, spec) == (True, (1, 2, 4, 6))
    # Then CFG off where the UNet batch is new (see warm_plan): 1 and 6.
    assert sizes == [1, 2, 4, 6, 1, 6]


def test_warm_up_covers_every_warm_size_at_every_bucket(models, monkeypatch):
    model = models("tiny-inpaint")
    shapes: list[tuple[int, int, int]] = []

    def fake_warm_up(pipe, **kwargs) -> accel.WarmUpResult:
        shapes.append((kwargs["width"], kwargs["height"], kwargs["batch_size"]))
        (mask, *_) = kwargs["extra_inputs"]["mask_image"]
        assert mask.size == (kwargs["width"], kwargs["height"]), "inputs at the warmed size"
        return accel.WarmUpResult(0.0, compiled=accel.is_compiled(pipe))

    monkeypatch.setattr(accel, "warm_up", fake_warm_up)
    spec = dataclasses.replace(model.spec, max_batch=2, warm_sizes=("64x48", "64x64", "48x64"))
    assert warm_model(model.pipe, spec) == (False, (1,))
    assert shapes == [(64, 64, 1)], "eager: one warm-up at the default size"
    shapes.clear()
    monkeypatch.setattr(accel, "is_compiled", lambda pipe: True)
    assert warm_model(model.pipe, spec) == (True, (1, 2))
    # Per size: buckets 1, 2 at the default (CFG) guidance, then 1 without CFG.
    assert shapes == [(w, h, b) for w, h in [(64, 64), (64, 48), (48, 64)] for b in (1, 2, 1)]


def test_inductor_tuning_is_set_only_when_compiling_on_cuda(monkeypatch):
    """The tutorial's inductor flags go into the UNet's and VAE's compile only when the
    option is on, the pipeline compiles, and the device is CUDA (faked here: no GPU)."""
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    from diffusers import StableDiffusionImg2ImgPipeline

    from worker.pipelines import accel_options
    from worker.tiny import build_tiny_components

    # A pipeline of its own: optimize_pipeline changes it in place.
    pipe = StableDiffusionImg2ImgPipeline(**build_tiny_components(), requires_safety_checker=False)
    compiles: list[dict] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiles.append(kw))
    monkeypatch.setattr(pipe, "to", lambda *args, **kwargs: pipe)  # stays on the CPU
    # _compile sets these process-wide: give them back afterwards.
    monkeypatch.setattr(inductor_config, "conv_1x1_as_mm", inductor_config.conv_1x1_as_mm)
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(dynamo_config, limit, getattr(dynamo_config, limit))
    tuned = accel.AccelOptions(
        device="cpu",
        dtype="float32",
        channels_last=False,
        fuse_qkv=False,
        compile=True,
        compile_vae=True,
        inductor_tuning=True,
    )
    plain = {"mode": "default", "fullgraph": True, "dynamic": False}

    accel.optimize_pipeline(pipe, tuned)
    assert compiles == [plain] * 3, "CPU: compiled without the CUDA tuning flags"
    assert accel.compile_kwargs(tuned, "cpu") == plain

    monkeypatch.setattr(accel, "resolve_device", lambda name: "cuda")
    for opts, expected in [
        (dataclasses.replace(tuned, compile=False), []),
        (dataclasses.replace(tuned, inductor_tuning=False), [plain] * 3),
        (tuned, [{"fullgraph": True, "dynamic": False, "options": accel.INDUCTOR_TUNING}] * 3),
    ]:
        compiles.clear()
        accel.optimize_pipeline(pipe, opts)
        assert compiles == expected, opts
    autotune = dataclasses.replace(tuned, compile_mode="max-autotune-no-cudagraphs")
    options = accel.compile_kwargs(autotune, "cuda")["options"]
    assert options["max_autotune"] is True, "the mode's own options are kept"
    assert options["epilogue_fusion"] is False

    # The registry's override, read like `compile`; never on the CPU.
    spec = dataclasses.replace(BUILTINS["tiny"], options={"inductor_tuning": True})
    assert accel_options(spec, "cuda", torch.bfloat16).inductor_tuning is True
    assert accel_options(spec, "cpu", torch.float32).inductor_tuning is False
    assert accel_options(BUILTINS["tiny"], "cuda", torch.bfloat16).inductor_tuning is False


def test_attention_first_puts_cudnn_ahead_and_default_restores_torchs_order(monkeypatch):
    import torch
    from torch.nn.attention import SDPBackend

    from worker.pipelines import accel_options

    torch_order = torch._C._get_sdp_priority_order()
    try:
        accel.set_attention_first("cudnn")
        order = torch._C._get_sdp_priority_order()
        assert order[0] == SDPBackend.CUDNN_ATTENTION.value
        assert sorted(order) == sorted(torch_order), "the others stay, behind it"
        accel.set_attention_first("default")
        assert torch._C._get_sdp_priority_order() == torch_order
    finally:
        torch._C._set_sdp_priority_order(torch_order)
    with pytest.raises(ValueError, match="attention must be one of"):
        accel.AccelOptions(attention="xformers")
    # The registry's override, like `compile`; never on the CPU (CUDA faked: no GPU here).
    monkeypatch.setattr(accel, "resolve_device", lambda name: name)
    spec = dataclasses.replace(BUILTINS["tiny"], options={"attention": "cudnn"})
    assert accel_options(spec, "cuda", torch.bfloat16).attention == "cudnn"
    assert accel_options(spec, "cpu", torch.float32).attention == "default"
    assert accel_options(BUILTINS["tiny"], "cuda", torch.bfloat16).attention == "default"


@pytest.mark.parametrize(
    "buckets,guidance,extra",
    [
        ((1, 2, 4, 8, 16), 7.5, [(1, 1.0)]),  # CFG default: only batch 1 without CFG is new
        ((1, 2, 4, 8), 0.0, [(8, 7.5)]),  # turbo: only the largest bucket with CFG is new
        ((1, 2, 4, 6), 0.0, [(4, 7.5), (6, 7.5)]),  # UNet 8 and 12 were never seen
    ],
)
def test_warm_plan_covers_every_unet_batch_a_request_can_cause(buckets, guidance, extra):
    plan = warm_plan(buckets, guidance)
    assert plan == [(b, guidance) for b in buckets] + extra
    unet = {2 * b if uses_cfg(g) else b for b, g in plan}
    assert unet >= {b for b in buckets} | {2 * b for b in buckets}


# --- the claim / render / store path on Postgres and S3 ----------------------------------------


@pytest.mark.parametrize("alias", ["tiny-inpaint", "echo"])
def test_batch_with_a_corrupt_source_renders_the_others(alias, models, settings, session_factory):
    model = models(alias)
    storage = storage_from_settings(settings)
    ctx = WorkerContext(
        settings=settings,
        model=model,
        storage=storage,
        session_factory=session_factory,
        name=f"{alias}-test",
    )
    good = png(cutout(64, 64))
    with session_scope(session_factory) as session:
        team = ensure_team(session, f"kinds-{uuid.uuid4().hex[:8]}")
        jobs = [
            make_job(storage, alias, data, seed=i)
            for i, data in enumerate([good, b"\x89PNG\r\n\x1a\n truncated", good])
        ]
        ids = [job.id for job in jobs]
        for job in jobs:
            job.team_id = team.id
            session.add(job)
    summary = run_render(ctx, ids)
    assert summary.outcomes["succeeded"] == 2 and summary.outcomes["failed"] == 1
    with session_factory() as session:
        rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
    ok, bad, ok2 = (rows[i] for i in ids)
    assert bad.status == "failed" and "cannot be decoded" in bad.error
    for row in (ok, ok2):
        assert row.status == "succeeded", row.error
        assert row.provenance["batch_size"] == 2, "the two good sources rendered together"
        out = open_rgba(storage.get(row.outputs[0]["key"]))
        assert out.size == (64, 64)
    if alias == "echo":
        assert (
            flatten(open_rgba(storage.get(ok.outputs[0]["key"]))).tobytes()
            == flatten(cutout(64, 64)).tobytes()
        )


# --- tensors in and out of the pipeline (worker/pixels.py) -----------------------------------


@pytest.mark.parametrize("alias", ["tiny", "tiny-inpaint", "tiny-controlnet"])
def test_render_gives_the_pixels_of_diffusers_own_pil_path(models, storage, alias):
    """The worker hands the pipeline tensors and takes tensors back; calling the same
    pipeline the same way with PIL images in and out must give exactly the same pixels."""
    model = models(alias)
    mask = png(half_mask(64, 48)) if alias == "tiny-inpaint" else None
    jobs = [
        make_job(storage, alias, png(noise(64, 48, seed=s)), seed=s, mask=mask, width=64,
                 height=48)
        for s in (1, 2)
    ]  # fmt: skip
    items = [prepare(model, storage, job) for job in jobs]
    calls: list[dict] = []
    real = model.pipe

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, **kwargs):
            calls.append(dict(kwargs))
            return real(**kwargs)

    # Compiled graphs guard on their inputs' strides: the tensor path must give the UNet
    # and the VAE encoder inputs laid out as the PIL path (and warm-up) gives them.
    strides: list[tuple] = []

    def note(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        strides.append((type(module).__name__, tuple(sample.shape), sample.stride()))
        # ControlNet's residuals, computed from the edges, are UNet inputs too.
        residuals = kwargs.get("down_block_additional_residuals") or ()
        strides.extend(("residual", tuple(r.shape), r.stride()) for r in residuals)

    hooks = [
        m.register_forward_pre_hook(note, with_kwargs=True) for m in (real.unet, real.vae.encoder)
    ]
    model_with_recorder = dataclasses.replace(model, pipe=Recording())
    ours = run_pipeline(model_with_recorder, items)
    ours_strides, strides[:] = list(strides), []

    (kwargs,) = calls
    assert kwargs["output_type"] == "pt" and isinstance(kwargs["image"], torch.Tensor)
    if alias == "tiny-inpaint":  # multiplied with the image: a tensor on its device too
        assert isinstance(kwargs["mask_image"], torch.Tensor)
        kwargs["mask_image"] = [repaint_mask(i.keep) for i in items]
    if alias == "tiny-controlnet":  # the edges go in as a tensor too
        assert isinstance(kwargs["control_image"], torch.Tensor)
        kwargs["control_image"] = [i.control for i in items]
    kwargs.update(
        image=[i.source for i in items],
        output_type="pil",
        generator=[torch.Generator().manual_seed(i.params.seed) for i in items],
        callback_on_step_end=None,
    )
    theirs = real(**kwargs).images
    for hook in hooks:
        hook.remove()
    assert ours_strides == strides
    if alias == "tiny-inpaint":  # the worker pastes the kept pixels back; so does this
        theirs = [paste_kept(t, i.source, i.keep) for t, i in zip(theirs, items, strict=True)]
    assert [o.tobytes() for o in ours] == [t.tobytes() for t in theirs]
