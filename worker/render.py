"""Render a batch of compatible jobs: the steps read like a diffusers pipeline's ``__call__``.

1. check inputs   2. fetch sources   3. run pipeline (one call, one generator per item)
4. encode         5. store (deterministic keys, provenance as object metadata)

Steps 1-2 and 4-5 are CPU and network work, step 3 is the GPU's: the render task
(worker/tasks.py) runs them as separate stages so that they overlap across tasks.

Per model kind, step 2 also derives what the pipeline is conditioned on (an inpaint keep
mask, canny edges) and step 3 pastes an inpaint job's kept pixels back; ``echo`` skips the
pipeline and returns the resized source. Step 2's images are cached per source, size and
kind (worker/prepared_cache.py): one photo x many prompts is decoded and resized once.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from PIL import Image

from shared.adapters import LORA_KINDS
from shared.canny import DEFAULT_HIGH, DEFAULT_LOW, canny_edges
from shared.errors import PermanentRenderError
from shared.images import (
    CONTENT_TYPES,
    EXTENSIONS,
    PNG_COMPRESS_LEVEL,
    alpha_channel,
    encode_image,
    flatten,
    has_transparency,
    open_rgba,
    resize_image,
)
from shared.jobs import Success
from shared.models import Job
from shared.presets import Preset, builtin_presets
from shared.registry import MAX_UPSCALED_SIDE, ModelSpec
from shared.schemas import REVIEW_THRESHOLDS, RenderParams
from shared.storage import Storage, content_addressed, output_key
from worker import presets as marketplace
from worker.content_credentials import (
    ContentCredentials,
    SigningCredential,
    sign_output,
    source_ingredient,
)
from worker.cutout import cutout_key, stored_cutout
from worker.fidelity import Fidelity, Thresholds, review_state, score
from worker.labels import Label, digital_source_type, output_label, preset_label, xmp_packet
from worker.masks import keep_from_alpha, keep_mask, paste_kept, repaint_mask
from worker.pipelines import LoadedModel, kind_inputs
from worker.pixels import batch_in, images_out, masks_in, to_pixels
from worker.prepared_cache import PreparedCache, PreparedInputs, PreparedKey
from worker.upscale import enlarged_size, fit, method, upscale_learned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderItem:
    """A claimed job with its decoded, resized source: ready for the pipeline.

    ``keep`` (inpaint): mode L, 255 where the source's pixels are kept (worker/masks.py).
    ``control`` (controlnet-canny): the canny edges of ``source`` the render follows.
    ``product`` (other kinds, a source with transparency): mode L, 255 where the source is
    opaque: the product whose colour drift is scored (worker/fidelity.py).
    ``mask_key`` (``mask: "auto"``): where the mask its cut-out found is stored, for the job.
    The images may be shared with other jobs (worker/prepared_cache.py): never change them
    in place, make new ones.
    """

    job: Job
    params: RenderParams
    source: Image.Image
    keep: Image.Image | None = None
    mask_key: str | None = None
    control: Image.Image | None = None
    product: Image.Image | None = None
    # The parsed files of ``params.adapters``, in order (worker/adapters.py).
    adapter_states: tuple[Any, ...] = ()

    @cached_property
    def pixels(self) -> torch.Tensor:
        """``source`` as the uint8 tensor the pipeline is given (worker/pixels.py). prepare()
        makes it on the io pool, so the device lane only stacks and copies."""
        return to_pixels(self.source)

    @cached_property
    def control_pixels(self) -> torch.Tensor | None:
        """``control`` as a uint8 tensor, like ``pixels`` (None for other kinds)."""
        return None if self.control is None else to_pixels(self.control)


@dataclass(frozen=True)
class RenderResult:
    """What a render produced and how, ready for ``mark_succeeded_bulk``."""

    job_id: uuid.UUID
    team_id: uuid.UUID  # whose usage it counts to (shared/usage.py)
    outputs: list[dict[str, Any]]
    provenance: dict[str, Any]
    # The stored output's scores against its source, and the review state they decide.
    fidelity: Fidelity | None = None
    review: str | None = None
    mask_key: str | None = None  # the mask a cut-out found (``mask: "auto"``), for the job

    def success(self) -> Success:
        """As ``mark_succeeded_bulk`` records it."""
        fidelity = None if self.fidelity is None else self.fidelity.as_dict()
        return Success(
            self.job_id, self.outputs, self.provenance, fidelity, self.review, self.mask_key
        )


def check_inputs(model: LoadedModel, params: RenderParams) -> None:
    """Re-check what the api checked: the registry may have changed since submission."""
    spec = model.spec
    for name in ("width", "height"):
        value = getattr(params, name)
        if value % 8 or not spec.min_size <= value <= spec.max_size:
            raise PermanentRenderError(
                f"{name}={value} is outside {spec.alias}'s limits "
                f"({spec.min_size}..{spec.max_size}, multiple of 8)"
            )
    if spec.denoises and int(params.steps * params.strength) < 1:
        raise PermanentRenderError("strength x steps leaves no denoising step")
    factor = upscale_factor(model, params)
    if factor is not None and max(params.width, params.height) * factor > MAX_UPSCALED_SIDE:
        raise PermanentRenderError(
            f"upscale: {params.width}x{params.height} x {factor} is over {MAX_UPSCALED_SIDE} px"
        )
    if params.adapters and spec.kind not in LORA_KINDS:
        raise PermanentRenderError(f"model {spec.alias!r} of kind {spec.kind} takes no adapters")


def prepare(
    model: LoadedModel, storage: Storage, job: Job, cache: PreparedCache | None = None
) -> RenderItem:
    """Steps 1 and 2 for one job: its params checked, its source (and mask) fetched and
    brought to the output size, plus what its model kind is conditioned on. A ``cache`` hit
    skips step 2: no fetch, no decode (worker/prepared_cache.py)."""
    params = RenderParams(**job.params)
    check_inputs(model, params)
    key = prepared_key(model.spec, job, params)
    if cache is None or key is None:
        inputs = prepare_inputs(model.spec, storage, job, params)
    else:
        inputs = cache.get(key, lambda: prepare_inputs(model.spec, storage, job, params))
    item = RenderItem(
        job=job,
        params=params,
        source=inputs.source,
        keep=inputs.keep,
        mask_key=found_mask_key(model.spec, job, params),
        control=inputs.control,
        product=inputs.product,
        # Fetched and parsed here, on the io pool; loaded on the device lane.
        adapter_states=model.adapters.fetch(storage, job.team_id, params.adapters),
    )
    if model.pipe is not None:  # echo renders nothing
        # Made here, on the io pool, not on the device lane.
        item.pixels  # noqa: B018
        item.control_pixels  # noqa: B018
    return item


def prepared_key(spec: ModelSpec, job: Job, params: RenderParams) -> PreparedKey | None:
    """Everything ``prepare_inputs`` depends on, or None when its inputs may change (a key
    that is not content-addressed): then it is not cached."""
    mask_key = (job.mask_key or found_mask_key(spec, job, params)) if spec.takes_mask else None
    if not all(content_addressed(k) for k in (job.source_key, mask_key) if k is not None):
        return None
    return PreparedKey(
        source_key=job.source_key,
        mask_key=mask_key,
        width=params.width,
        height=params.height,
        resize_mode=params.resize_mode,
        kind=spec.kind,
        canny=canny_thresholds(spec) if spec.kind == "controlnet-canny" else None,
    )


def prepare_inputs(
    spec: ModelSpec, storage: Storage, job: Job, params: RenderParams
) -> PreparedInputs:
    """Step 2 for one job: fetch and decode its source (and mask), then ``build_inputs``.
    Decoded upright, 8-bit and in sRGB (shared/images.py ``open_rgba``), as the api checked
    them; resized in memory that goes with the output size, not the source's shape."""
    # StorageError (missing) or TransientError (S3 down), both handled by the caller.
    data = storage.get(job.source_key)
    mask_data = storage.get(job.mask_key) if spec.takes_mask and job.mask_key else None
    try:
        decoded = open_rgba(data)
    except OSError as e:
        raise PermanentRenderError(f"source image cannot be decoded: {e}") from e
    found = found_mask_key(spec, job, params)
    if found is not None and params.cutout is not None:  # mask "auto": stored, else found
        mask_data = stored_cutout(spec, storage, found, flatten(decoded), params.cutout)
    return build_inputs(spec, params, decoded, mask_data)


def found_mask_key(spec: ModelSpec, job: Job, params: RenderParams) -> str | None:
    """Where the mask of a ``mask: "auto"`` job is stored once its cut-out found it
    (worker/cutout.py): from then on it is used as a given mask is. None for other jobs,
    and for a job that recorded it already (a rerender reads ``job.mask_key``)."""
    if not spec.takes_mask or job.mask_key is not None or params.cutout is None:
        return None
    return cutout_key(spec, job.team_id, job.source_key, params.cutout)


def build_inputs(
    spec: ModelSpec, params: RenderParams, decoded: Image.Image, mask_data: bytes | None
) -> PreparedInputs:
    """Resize the decoded source (RGB or RGBA) and derive the kind's conditioning."""
    size = (params.width, params.height)
    # Transparency is flattened onto white for every kind; inpaint reads it as a keep mask.
    source = resize_image(flatten(decoded), *size, params.resize_mode)
    keep = control = product = None
    if spec.takes_mask:
        keep = keep_mask(decoded, mask_data, *size, params.resize_mode)
    elif (alpha := alpha_channel(decoded)) is not None and has_transparency(decoded):
        # A cut-out: its opaque pixels are the product, as an inpaint job would keep them.
        product = keep_from_alpha(alpha, *size, params.resize_mode)
    if spec.kind == "controlnet-canny":
        control = canny_edges(source, *canny_thresholds(spec))
    return PreparedInputs(source=source, keep=keep, control=control, product=product)


def canny_thresholds(spec: ModelSpec) -> tuple[int, int]:
    """(low, high) of a controlnet-canny model: its options, else OpenCV's usual 100, 200."""
    low = int(spec.options.get("canny_low", DEFAULT_LOW))
    high = int(spec.options.get("canny_high", DEFAULT_HIGH))
    return low, high


def padded(items: list[RenderItem], size: int) -> list[RenderItem]:
    """``items`` repeated at the end up to ``size`` (a warm batch bucket); the padded
    outputs are thrown away. Repeating a real item keeps the inputs ordinary."""
    return items + [items[-1]] * (size - len(items))


@dataclass(frozen=True)
class Rendered:
    """What one pipeline call produced, before steps 4 and 5."""

    items: list[RenderItem]
    images: list[Image.Image]
    # The size the pipeline really ran at (padding included): provenance records it, as it
    # is part of the determinism contract (same params + seed + batch size -> same pixels).
    batch_size: int
    seconds: float
    # Per item: the render enlarged by the learned upscaler for its scene presets (None:
    # no preset needs it, or the worker has no upscaler; Lanczos then, on the io pool).
    details: list[Image.Image | None] = field(default_factory=list)

    def detail(self, index: int) -> Image.Image | None:
        return self.details[index] if self.details else None


def render(
    model: LoadedModel,
    items: list[RenderItem],
    should_stop: Callable[[], bool] = lambda: False,
    presets: Mapping[str, Preset] | None = None,
) -> Rendered:
    """Step 3, timed: the only step that runs on the device lane. It ends with the learned
    upscaler's passes (GPU work, counted here) for the items that ask for ``upscale``, and
    for those whose scene presets need more pixels than the render has (``presets``: the
    worker's; None: the built-ins)."""
    started = time.perf_counter()
    images = run_pipeline(model, items, should_stop)
    images = [
        upscale_learned(image, upscale_factor(model, item.params) or 1, model.upscaler)
        for item, image in zip(items, images, strict=True)
    ]
    known = builtin_presets() if presets is None else presets
    details = [
        preset_detail(model, item, image, known) for item, image in zip(items, images, strict=True)
    ]
    seconds = time.perf_counter() - started
    return Rendered(items, images, model.pipeline_batch_size(len(items)), seconds, details)


def preset_detail(
    model: LoadedModel, item: RenderItem, image: Image.Image, presets: Mapping[str, Preset]
) -> Image.Image | None:
    """``image`` enlarged by the learned upscaler as far as the item's largest scene preset
    needs (1600-2048 px from a 512 render), brought to that size at once so the host holds
    no more than the preset's pixels; None when no preset needs more or there is no
    upscaler. A cut-out preset (amazon-main) keeps the product's own pixels: never these."""
    if model.upscaler is None or not item.params.presets:
        return None
    size = enlarged_size(
        (item.params.width, item.params.height), upscale_factor(model, item.params) or 1
    )
    scene = [
        presets[n] for n in item.params.presets if n in presets and not presets[n].needs_cutout
    ]
    factor = max((marketplace.enlargement(p, size) for p in scene), default=1.0)
    if factor <= 1:
        return None
    return fit(
        upscale_learned(image, factor * size[0] / image.width, model.upscaler),
        enlarged_size(size, factor),
    )


def run_pipeline(
    model: LoadedModel, items: list[RenderItem], should_stop: Callable[[], bool] = lambda: False
) -> list[Image.Image]:
    """Step 3: one pipeline call for compatible items; one output per item, in order.

    Each item has its own generator, so its pixels depend on its seed and the pipeline
    batch size (``model.pipeline_batch_size``, padded when compiled), never on its
    neighbours' prompts. ``should_stop`` is polled after every denoising step.
    """
    if model.pipe is None:  # echo, upscale: no diffusion model (upscale's is run by render)
        _stand_in_for_a_gpu(model.spec, len(items))
        return [item.source.copy() for item in items]
    served = padded(items, model.pipeline_batch_size(len(items)))
    images = _call_pipeline(model, served, should_stop)[: len(items)]
    return [
        image if item.keep is None else paste_kept(image, item.source, item.keep)
        for item, image in zip(items, images, strict=True)
    ]


def _stand_in_for_a_gpu(spec: ModelSpec, images: int) -> None:
    """``echo`` with ``options = { device_seconds_per_image = S }`` holds the device lane
    as long as a GPU would render that batch (e.g. 0.084: SD1.5 at 512² on an H200), so a
    load test without GPUs still shows whether the worker keeps its GPU busy. It sleeps:
    the CPU stays free for the other stages, as it would while a GPU renders."""
    seconds = float(spec.options.get("device_seconds_per_image", 0.0)) * images
    if seconds > 0:
        time.sleep(seconds)


def _call_pipeline(
    model: LoadedModel, items: list[RenderItem], should_stop: Callable[[], bool]
) -> list[Image.Image]:
    params = items[0].params
    generators = [torch.Generator(device="cpu").manual_seed(i.params.seed) for i in items]
    negatives = [i.job.negative_prompt for i in items]

    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if should_stop():
            pipe._interrupt = True  # diffusers' own flag: leave the denoising loop now
        return kwargs

    extra = kind_inputs(
        model.spec,
        params.width,
        params.height,
        masks=[repaint_mask(i.keep) for i in items if i.keep is not None],
        controls=[i.control for i in items if i.control is not None],
    )
    if "mask_image" in extra:  # inpaint multiplies it with `image`: on the same device
        extra["mask_image"] = masks_in(extra["mask_image"], model.device)
    if "control_image" in extra:  # converted on the device too, like `image`
        controls = [i.control_pixels for i in items if i.control_pixels is not None]
        extra["control_image"] = batch_in(controls, model.device)
    # The group's adapters (all its jobs have the same: shared/batching.py), or LoRA off.
    model.adapters.activate(
        model.pipe, params.adapters, items[0].adapter_states, compiled=model.compiled
    )
    # no_grad, not inference_mode: warm-up ran under the pipeline's own no_grad, and compiled
    # graphs guard on that mode; inference_mode here recompiled every bucket on its first job.
    with torch.no_grad():
        result = model.pipe(
            prompt=[i.job.prompt for i in items],
            negative_prompt=None
            if all(n is None for n in negatives)
            else [n or "" for n in negatives],
            # Tensors in and out: the per-pixel conversions run on the device, not on the
            # lane's CPU thread while the GPU waits (worker/pixels.py); same pixels as PIL.
            image=batch_in([i.pixels for i in items], model.device),
            strength=params.strength,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            generator=generators,
            output_type="pt",
            callback_on_step_end=on_step_end,
            **extra,
        )
    return images_out(result.images)


def store_output(
    model: LoadedModel,
    storage: Storage,
    item: RenderItem,
    image: Image.Image,
    *,
    worker: str,
    batch_size: int,
    render_seconds: float,
    png_compress_level: int = PNG_COMPRESS_LEVEL,
    credentials: ContentCredentials | None = None,
    presets: Mapping[str, Preset] | None = None,
    detail: Image.Image | None = None,
    cpu: AbstractContextManager[object] = nullcontext(),
) -> RenderResult:
    """Steps 4 and 5 for one item (and one more output per preset it asks for: its scene
    presets from ``detail``, the render as the learned upscaler enlarged it, if given).
    ``cpu`` is held while encoding and scoring, not while storing (worker/context.py)."""
    job, params = item.job, item.params
    factor = upscale_factor(model, params)
    with cpu:
        if factor is not None:  # render ran the upscaler's passes; Lanczos to the size here
            image = fit(image, enlarged_size((params.width, params.height), factor))
        data = encode_output(model, storage, item, image, png_compress_level, credentials)
        # Scored on the io pool, as the encoding is: never on the device lane (worker/tasks.py).
        fidelity, review = assess(model.spec, item, data)
    provenance = {
        "model": model.spec.alias,
        "source": model.spec.source,
        "revision": model.revision,
        "kind": model.spec.kind,
        "params": params.model_dump(),
        "batch_size": batch_size,
        "worker": worker,
        "device": model.device,
        "render_seconds": round(render_seconds, 4),
        "license": model.spec.license,
        "commercial_use": model.spec.commercial_use,
        # What the file itself says (encode_output): its IPTC type in the XMP, and whether a
        # C2PA manifest was signed for it (a team without a certificate gets the XMP only).
        "digital_source_type": digital_source_type(model.spec.kind),
        "c2pa_signed": credentials is not None and credentials.for_team(job.team_id) is not None,
        # What enlarged it (``upscale``): the upscale model's alias, or "lanczos".
        "upscaler": None if factor is None else method(factor, model.upscaler),
    }
    round_ = len(job.history or [])  # a rerender stores anew: earlier rounds' objects stay
    key = output_key(job.team_id, job.id, round_, EXTENSIONS[params.output_format])
    content_type = CONTENT_TYPES[params.output_format]
    metadata = {**object_metadata(job.id, provenance), **fidelity_metadata(fidelity, review)}
    storage.put(key, data, content_type, metadata=metadata)
    output = {
        "key": key,
        "width": image.width,
        "height": image.height,
        "content_type": content_type,
    }
    extra = store_preset_outputs(
        model, storage, item, image, presets, round_, provenance, credentials, detail, cpu
    )
    return RenderResult(
        job_id=job.id,
        team_id=job.team_id,
        outputs=[output, *extra],
        provenance=provenance,
        fidelity=fidelity,
        review=review,
        mask_key=item.mask_key,
    )


def upscale_factor(model: LoadedModel, params: RenderParams) -> int | None:
    """How many times the output is enlarged: the job's ``upscale``, else an upscale-kind
    model's own scale; None: not at all."""
    if params.upscale is not None:
        return params.upscale
    if model.spec.kind == "upscale" and model.upscaler is not None:
        return model.upscaler.scale
    return None


def assess(spec: ModelSpec, item: RenderItem, data: bytes) -> tuple[Fidelity, str]:
    """The encoded output's scores against its source (decoded back: what the client gets,
    lossy formats included) and its review state under the model's thresholds, or its
    batch's where the batch overrides them (copied into the job's params at creation)."""
    with Image.open(io.BytesIO(data)) as stored:
        fidelity = score(item.source, stored.convert("RGB"), item.keep, item.product)
    thresholds = Thresholds(spec.min_structure, spec.max_colour_drift)
    thresholds = thresholds.override(item.job.params.get(REVIEW_THRESHOLDS))
    return fidelity, review_state(fidelity, thresholds, item.params.output_format)


def fidelity_metadata(fidelity: Fidelity, review: str) -> dict[str, str]:
    """The scores and review state as flat S3 metadata strings (as scored at render; a
    person's later decision is in the job, not on the object)."""
    kept = fidelity.kept_pixels_changed
    return {
        "fidelity-structure": str(fidelity.structure),
        "fidelity-ssim": str(fidelity.ssim),
        "fidelity-colour-drift": str(fidelity.colour_drift),
        **({} if kept is None else {"fidelity-kept-pixels-changed": str(kept)}),
        "review": review,
    }


def encode_output(
    model: LoadedModel,
    storage: Storage,
    item: RenderItem,
    image: Image.Image,
    png_compress_level: int = PNG_COMPRESS_LEVEL,
    credentials: ContentCredentials | None = None,
) -> bytes:
    """Step 4: ``image`` in the job's format, labelled inside the file (XMP: what it is and
    how it was made, worker/labels.py) and, for a team with a certificate, signed last
    (C2PA, worker/content_credentials.py)."""
    job, params = item.job, item.params
    label = output_label(model.spec, model.revision, job, params)
    data = encode_image(image, params.output_format, png_compress_level, xmp=xmp_packet(label))
    credential = None if credentials is None else credentials.for_team(job.team_id)
    if credential is None:
        return data
    # The source as the team gave it (a cache hit: prepare fetched it) is the ingredient.
    import c2pa  # only a signing team's outputs need it (worker/content_credentials.py)

    source = source_ingredient(job.source_key, storage.get(job.source_key), item.source)
    try:
        return sign_output(data, params.output_format, label, source, credential)
    except c2pa.C2paError as e:  # e.g. an expired certificate: say so, never ship unsigned
        raise PermanentRenderError(f"C2PA signing for team {credential.team!r} failed: {e}") from e


def store_preset_outputs(
    model: LoadedModel,
    storage: Storage,
    item: RenderItem,
    image: Image.Image,
    presets: Mapping[str, Preset] | None,
    round_: int,
    provenance: dict[str, Any],
    credentials: ContentCredentials | None = None,
    detail: Image.Image | None = None,
    cpu: AbstractContextManager[object] = nullcontext(),
) -> list[dict[str, Any]]:
    """One more output per preset the job asks for (worker/presets.py), stored beside the
    main one (``{round}-{preset}.{ext}``), labelled as what it is. ``presets``: the worker's
    (built-ins and its registry file's); None: the built-ins alone. A scene preset starts
    from ``detail`` where the device lane enlarged the render for it (``preset_detail``: a
    learned upscaler runs there only, worker/upscale.py), else from the render, Lanczos
    enlarging it here on the io pool."""
    known = builtin_presets() if presets is None else presets
    job, params = item.job, item.params
    base = output_label(model.spec, model.revision, job, params)
    credential = None if credentials is None else credentials.for_team(job.team_id)
    outputs = []
    for name in params.presets:
        preset = known.get(name)
        if preset is None:  # the registry lost it since the api accepted the job
            raise PermanentRenderError(f"unknown preset {name!r} on this worker")
        scene = image if detail is None or preset.needs_cutout else detail
        label = preset_label(base, name, cutout=preset.needs_cutout)
        with cpu:
            framed = marketplace.apply(preset, scene, cutout_of(item, image))
            data = marketplace.encode(preset, framed, xmp_packet(label))
            if credential is not None:  # signed like the main output (encode_output)
                data = _sign_preset(data, preset, name, label, item, storage, credential)
        key = output_key(job.team_id, job.id, round_, preset.extension, preset=name)
        content_type = CONTENT_TYPES[preset.format]
        metadata = {**object_metadata(job.id, provenance), "preset": name}
        storage.put(key, data, content_type, metadata=metadata)
        outputs.append(
            {
                "key": key,
                "width": framed.width,
                "height": framed.height,
                "content_type": content_type,
                "preset": name,
            }
        )
    return outputs


def _sign_preset(
    data: bytes,
    preset: Preset,
    name: str,
    label: Label,
    item: RenderItem,
    storage: Storage,
    credential: SigningCredential,
) -> bytes:
    import c2pa  # only a signing team's outputs need it (worker/content_credentials.py)

    job = item.job
    source = source_ingredient(job.source_key, storage.get(job.source_key), item.source)
    try:
        return sign_output(data, preset.format, label, source, credential)
    except c2pa.C2paError as e:
        raise PermanentRenderError(f"C2PA signing of preset {name!r} failed: {e}") from e


def cutout_of(item: RenderItem, image: Image.Image) -> marketplace.Cutout | None:
    """The product alone, for a preset made of it: an inpaint job's kept pixels (the render
    kept the source's, bit for bit, so the output at its final size serves, upscaled
    included), else a transparent source's opaque pixels (the source, not the render: an
    img2img render restyled the product too); None: the job has no cut-out."""
    if item.keep is not None:
        keep = item.keep
        if keep.size != image.size:
            keep = keep.resize(image.size, Image.Resampling.BILINEAR)
        return marketplace.Cutout(image, keep)
    if item.product is not None:
        return marketplace.Cutout(item.source, item.product)
    return None


def discard_outputs(storage: Storage, results: list[RenderResult]) -> None:
    """Step 5 undone: remove what was stored for jobs canceled during their upload (the
    conditional ``mark_succeeded_bulk`` refused them). A delete that fails is left to the
    dispatcher's sweep of canceled jobs' outputs (dispatch/dispatcher.py)."""
    for result in results:
        for output in result.outputs:
            try:
                storage.delete(output["key"])
            except Exception as e:  # S3 away: the sweep retries it
                log.warning(
                    "could not remove %s of canceled job %s: %s", output["key"], result.job_id, e
                )


def render_batch(
    model: LoadedModel,
    storage: Storage,
    items: list[RenderItem],
    *,
    worker: str,
    should_stop: Callable[[], bool] = lambda: False,
    skip: Callable[[uuid.UUID], bool] = lambda _: False,
    presets: Mapping[str, Preset] | None = None,
) -> list[RenderResult]:
    """All five steps in the calling thread: render ``items`` in one pipeline call and store
    each output not ``skip``-ped (the worker splits these across threads, worker/tasks.py)."""
    rendered = render(model, items, should_stop, presets)
    return [
        store_output(
            model,
            storage,
            item,
            image,
            worker=worker,
            batch_size=rendered.batch_size,
            render_seconds=rendered.seconds,
            presets=presets,
            detail=rendered.detail(i),
        )
        for i, (item, image) in enumerate(zip(rendered.items, rendered.images, strict=True))
        if not skip(item.job.id)
    ]


def object_metadata(job_id: uuid.UUID, provenance: dict[str, Any]) -> dict[str, str]:
    """S3 user metadata is flat ASCII strings; keep the provenance findable from the object."""
    params = provenance["params"]
    return {
        "job-id": str(job_id),
        "model": provenance["model"],
        "revision": provenance["revision"],
        "seed": str(params["seed"]),
        "steps": str(params["steps"]),
        "strength": str(params["strength"]),
        "guidance-scale": str(params["guidance_scale"]),
        "batch-size": str(provenance["batch_size"]),
        "worker": provenance["worker"],
    }
