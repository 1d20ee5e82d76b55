"""Load a model alias once, through ``from_pretrained``, and keep it warm.

Each model kind maps to one diffusers pipeline class (``echo`` loads nothing). A compiled
pipeline recompiles for every new batch size, so a worker serves a few batch-size buckets
(powers of two up to ``max_batch``, and ``max_batch``), warms up at each of them at start,
and pads every call up to the next bucket (worker/render.py): no job pays a compile.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from shared.errors import ModelLoadError
from shared.registry import MAX_UPSCALED_SIDE, ModelSpec
from shared.settings import Settings
from worker.adapters import Adapters
from worker.upscale import TILE, TILE_OVERLAP, SpandrelUpscaler, Upscaler

log = logging.getLogger(__name__)

PIPELINE_CLASSES: dict[str, str] = {
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "controlnet-canny": "StableDiffusionControlNetImg2ImgPipeline",
}
ECHO_REVISION = "echo"


@dataclass
class LoadedModel:
    """A pipeline on its device, with what provenance needs to know about it.

    ``pipe`` is None for ``echo``. ``compiled`` says whether the pipeline runs through
    torch.compile after warm-up; only then are calls padded up to one of ``buckets``.
    """

    spec: ModelSpec
    pipe: Any
    device: str
    revision: str
    load_seconds: float
    compiled: bool = False
    buckets: tuple[int, ...] = (1,)
    # What enlarges outputs that ask for ``upscale``: the upscale-kind model its
    # ``options.upscaler`` names, or an upscale model's own weights (worker/upscale.py).
    upscaler: Upscaler | None = None
    # Its brand style adapters (LoRA): files fetched, and those loaded (worker/adapters.py).
    adapters: Adapters = field(default_factory=Adapters)

    def pipeline_batch_size(self, items: int) -> int:
        """The batch size a call for ``items`` jobs runs at: the next warm bucket when
        compiled (a new shape would recompile for tens of seconds), else ``items``."""
        if not self.compiled:
            return items
        return next((b for b in self.buckets if b >= items), items)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch``: 6 -> (1, 2, 4, 6).

    Padding to the next bucket wastes at most half a batch, and warm-up compiles only
    log2(max_batch) + 1 shapes instead of ``max_batch``.
    """
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def weights_location(spec: ModelSpec, settings: Settings) -> str:
    """A local folder or a hub id. Built-in models are built offline on first use."""
    if spec.is_builtin:
        from worker.tiny import TINY_KINDS, save_tiny_pipeline

        name = spec.source.removeprefix("builtin:")
        if name not in TINY_KINDS:
            raise ModelLoadError(f"unknown built-in model {spec.source!r}")
        if TINY_KINDS[name] != spec.kind:
            raise ModelLoadError(
                f"model {spec.alias!r}: built-in {name!r} is of kind {TINY_KINDS[name]!r}, "
                f"not {spec.kind!r}"
            )
        return str(save_tiny_pipeline(settings.model_cache_dir / name, TINY_KINDS[name]))
    return spec.source


def folder_fingerprint(folder: Path) -> str:
    """A cheap, stable hash of a weights folder: config contents plus weight file sizes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


def accel_options(spec: ModelSpec, device: str, dtype: Any) -> Any:
    """The measured-best fast path for ``device``, with the registry's per-model overrides."""
    from worker.accel import AccelOptions

    best = AccelOptions.best_for(device)
    on_gpu = device != "cpu"
    return replace(
        best,
        dtype=str(dtype).removeprefix("torch."),
        compile=bool(spec.options.get("compile", best.compile)) and on_gpu,
        # Applies only when compiling; off by default until measured (worker/accel.py).
        inductor_tuning=bool(spec.options.get("inductor_tuning", best.inductor_tuning)) and on_gpu,
        # CUDA only, like the other process-wide flags; off by default until measured.
        attention=str(spec.options.get("attention", best.attention)) if on_gpu else "default",
        vae_tiling=bool(spec.options.get("vae_tiling", False)),
        # Fused QKV weights cost the CPU's oneDNN ~10 s of first-call setup per shape
        # for no gain at tiny sizes; on CUDA it saves a GEMM per attention.
        fuse_qkv=on_gpu,
    )


def kind_inputs(
    spec: ModelSpec,
    width: int,
    height: int,
    *,
    masks: list[Image.Image] | None = None,
    controls: list[Image.Image] | None = None,
) -> dict[str, Any]:
    """The pipeline arguments a kind needs beyond prompt, image, strength, steps, guidance.

    ``masks``: white repaints (inpaint). ``controls``: canny edge maps (controlnet-canny).
    Sizes are given explicitly: the inpaint pipeline would otherwise default to the UNet's
    native size, not the image's.
    """
    if spec.kind == "inpaint":
        return {"mask_image": masks, "height": height, "width": width}
    if spec.kind == "controlnet-canny":
        scale = float(spec.options.get("controlnet_conditioning_scale", 1.0))
        return {
            "control_image": controls,
            "height": height,
            "width": width,
            "controlnet_conditioning_scale": scale,
        }
    return {}


def warm_up_inputs(
    spec: ModelSpec, batch_size: int, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Dummy kind-specific inputs at ``size`` (default: the model's; shapes are what matter)."""
    size = size or (spec.width, spec.height)
    return kind_inputs(
        spec,
        *size,
        masks=[Image.new("L", size, 255)] * batch_size,
        controls=[Image.new("RGB", size, (0, 0, 0))] * batch_size,
    )


def _pipeline_class(kind: str) -> Any:
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[kind])


def _load_controlnet(spec: ModelSpec, location: str, dtype: Any) -> Any:
    """From ``spec.controlnet`` (hub id or folder), else the ``controlnet`` subfolder."""
    from diffusers import ControlNetModel

    where = spec.controlnet or location
    kwargs: dict[str, Any] = {} if spec.controlnet else {"subfolder": "controlnet"}
    revision = None if spec.controlnet else spec.revision
    return ControlNetModel.from_pretrained(
        where, dtype=dtype, revision=revision, local_files_only=Path(where).is_dir(), **kwargs
    )


def _set_scheduler(pipe: Any, spec: ModelSpec) -> None:
    """Swap in the registry's scheduler class, built from the checkpoint's scheduler config."""
    if spec.scheduler is None:
        return
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, spec.scheduler, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelLoadError(
            f"model {spec.alias!r}: scheduler {spec.scheduler!r} is not a diffusers scheduler"
        )
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def _from_pretrained(spec: ModelSpec, location: str, dtype: Any) -> Any:
    extra: dict[str, Any] = {}
    try:
        if spec.kind == "controlnet-canny":
            extra["controlnet"] = _load_controlnet(spec, location, dtype)
        return _pipeline_class(spec.kind).from_pretrained(
            location,
            dtype=dtype,
            revision=spec.revision,
            local_files_only=Path(location).is_dir(),
            safety_checker=None,
            requires_safety_checker=False,
            **extra,
        )
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load model {spec.alias!r} from {location!r}: {e}") from e


def _revision(spec: ModelSpec, location: str) -> str:
    if spec.revision:
        return spec.revision
    revision = folder_fingerprint(Path(location)) if Path(location).is_dir() else "main"
    if spec.controlnet and Path(spec.controlnet).is_dir():
        revision += "+" + folder_fingerprint(Path(spec.controlnet))
    return revision


def uses_cfg(guidance_scale: float) -> bool:
    """diffusers runs classifier-free guidance (the UNet at twice the batch) above 1."""
    return guidance_scale > 1


def warm_plan(buckets: tuple[int, ...], guidance_scale: float) -> list[tuple[int, float]]:
    """(batch, guidance) pairs to warm: every bucket at the model's default guidance, then
    the other guidance mode only where it gives the UNet a batch not yet seen.

    A request may turn CFG on or off, which halves or doubles the UNet's batch: with SD1.5's
    CFG default, buckets 1..16 give the UNet 2..32, so only batch 1 without CFG is new; with
    a turbo model's no-CFG default, only the largest bucket with CFG is.
    """
    default_cfg = uses_cfg(guidance_scale)
    other = 1.0 if default_cfg else 7.5
    seen = {2 * b if default_cfg else b for b in buckets}
    extra = [(b, other) for b in buckets if (b if default_cfg else 2 * b) not in seen]
    return [(b, guidance_scale) for b in buckets] + extra


def warm_model(pipe: Any, spec: ModelSpec) -> tuple[bool, tuple[int, ...]]:
    """Warm ``pipe`` at every shape it will serve; returns (compiled, buckets).

    Compiled: every bucket at every served size (the default and ``warm_sizes``), with CFG
    on and off (``warm_plan``), so no job pays a recompile. Eager: batch 1 at the default
    size and guidance only (enough for lazy allocations and kernels; other shapes cost
    nothing extra the first time). If compilation fails at some shape the pipeline is eager
    from then on (warm_up's fallback) and calls are no longer padded.
    """
    from worker.accel import is_compiled, warm_up

    compiled = is_compiled(pipe)
    buckets = batch_buckets(spec.max_batch) if compiled else (1,)
    sizes = spec.served_sizes if compiled else spec.served_sizes[:1]
    plan = warm_plan(buckets, spec.guidance_scale) if compiled else [(1, spec.guidance_scale)]
    for width, height in sizes:
        for batch, guidance in plan:
            result = warm_up(
                pipe,
                width=width,
                height=height,
                steps=spec.steps,
                batch_size=batch,
                strength=spec.strength,
                guidance_scale=guidance,
                extra_inputs=warm_up_inputs(spec, batch, (width, height)),
            )
            log.info(
                "warmed %s at %dx%d batch %d guidance %g in %.1fs",
                spec.alias,
                width,
                height,
                batch,
                guidance,
                result.seconds,
            )
            if compiled and not result.compiled:
                return False, (1,)
    return compiled, buckets


def upscale_weights(spec: ModelSpec, settings: Settings) -> Path:
    """An upscale-kind entry's weights file; the built-in one is built offline on first use."""
    if not spec.is_builtin:
        return Path(spec.source)
    from worker.tiny import TINY_UPSCALE, save_tiny_esrgan

    name = spec.source.removeprefix("builtin:")
    if name != TINY_UPSCALE:
        raise ModelLoadError(f"unknown built-in upscale model {spec.source!r}")
    return save_tiny_esrgan(settings.model_cache_dir / f"{name}.safetensors")


def load_upscaler(spec: ModelSpec, settings: Settings) -> SpandrelUpscaler:
    """An upscale-kind entry's weights file, through spandrel's architecture detection, on
    the entry's device, tiled as its ``options.tile`` / ``options.tile_overlap`` say."""
    from spandrel import UnsupportedModelError

    from worker.accel import resolve_device

    try:
        return SpandrelUpscaler.load(
            spec.alias,
            upscale_weights(spec, settings),
            resolve_device(spec.device),
            tile=int(spec.options.get("tile", TILE)),
            overlap=int(spec.options.get("tile_overlap", TILE_OVERLAP)),
        )
    except (OSError, ValueError, UnsupportedModelError) as e:
        raise ModelLoadError(
            f"cannot load upscaler {spec.alias!r} from {spec.source!r}: {e}"
        ) from e


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a weights file (its first 16 hex digits): an upscaler's revision."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _load_upscale_model(spec: ModelSpec, settings: Settings) -> LoadedModel:
    # No diffusion pipeline: step 3 is the upscaler's passes (worker/render.py).
    started = time.perf_counter()
    upscaler = load_upscaler(spec, settings)
    if spec.max_size * upscaler.scale > MAX_UPSCALED_SIDE:  # the api checks only max_size
        raise ModelLoadError(
            f"model {spec.alias!r}: max_size {spec.max_size} x its scale {upscaler.scale} is "
            f"over {MAX_UPSCALED_SIDE} px; set max_size <= {MAX_UPSCALED_SIDE // upscaler.scale}"
        )
    seconds = time.perf_counter() - started
    device = str(upscaler.descriptor.device)
    log.info(
        "upscaler %s (%s %dx) loaded on %s in %.2fs",
        spec.alias,
        upscaler.architecture,
        upscaler.scale,
        device,
        seconds,
    )
    return LoadedModel(
        spec=spec,
        pipe=None,
        device=device,
        revision=spec.revision or file_fingerprint(upscale_weights(spec, settings)),
        load_seconds=seconds,
        upscaler=upscaler,
    )


def load_model(
    spec: ModelSpec, settings: Settings, *, warm: bool = True, upscaler: ModelSpec | None = None
) -> LoadedModel:
    """Load ``spec`` onto its device, apply the fast path and warm it up. ``upscaler``: the
    upscale-kind entry ``spec.options.upscaler`` names (shared/registry.py ``upscaler_of``),
    loaded beside it for the jobs that ask for ``upscale``."""
    if spec.kind == "upscale":
        return _load_upscale_model(spec, settings)
    if spec.kind == "echo":
        # No weights, no torch: the source comes back resized (worker/render.py).
        return LoadedModel(
            spec=spec,
            pipe=None,
            device="cpu",
            revision=ECHO_REVISION,
            load_seconds=0.0,
            upscaler=None if upscaler is None else load_upscaler(upscaler, settings),
        )
    import torch

    from worker.accel import is_compiled, optimize_pipeline, resolve_device
    from worker.latents import batch_vae_encode

    started = time.perf_counter()
    location = weights_location(spec, settings)
    device = resolve_device(spec.device)
    dtype = getattr(torch, spec.dtype) if device != "cpu" else torch.float32
    pipe = _from_pretrained(spec, location, dtype)
    _set_scheduler(pipe, spec)
    hotswap_rank = _enable_lora_hotswap(pipe, spec)  # before the fast path compiles the UNet
    pipe = optimize_pipeline(pipe, accel_options(spec, device, dtype))
    batch_vae_encode(pipe)  # one VAE encode per batch (worker/latents.py)
    if warm:
        compiled, buckets = warm_model(pipe, spec)
    else:
        compiled = is_compiled(pipe)
        buckets = batch_buckets(spec.max_batch) if compiled else (1,)
    revision = _revision(spec, location)
    seconds = time.perf_counter() - started
    log.info(
        "model %s (%s) loaded on %s in %.2fs (revision %s, batch buckets %s)",
        spec.alias,
        spec.kind,
        device,
        seconds,
        revision,
        buckets if compiled else "none: eager",
    )
    return LoadedModel(
        spec=spec,
        pipe=pipe,
        device=device,
        revision=revision,
        load_seconds=seconds,
        compiled=compiled,
        buckets=buckets,
        upscaler=None if upscaler is None else load_upscaler(upscaler, settings),
        adapters=Adapters(hotswap_rank=hotswap_rank),
    )


def _enable_lora_hotswap(pipe: Any, spec: ModelSpec) -> int | None:
    """``options.lora_hotswap_rank``: the highest LoRA rank the model's adapters may have.
    Set, the pipeline swaps one adapter's weights for another's in place (diffusers'
    ``enable_lora_hotswap``, called before compiling) so a compiled UNet does not
    recompile per adapter (worker/adapters.py)."""
    rank = spec.options.get("lora_hotswap_rank")  # an int >= 1: shared/registry.py checks
    if rank is None:
        return None
    pipe.enable_lora_hotswap(target_rank=int(rank))
    return int(rank)
