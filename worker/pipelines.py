"""Load a model alias once, through ``from_pretrained``, and keep it warm."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadError
from shared.registry import ModelSpec
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A pipeline on its device, with what provenance needs to know about it."""

    spec: ModelSpec
    pipe: Any
    device: str
    revision: str
    load_seconds: float


def weights_location(spec: ModelSpec, settings: Settings) -> str:
    """A local folder or a hub id. Built-in models are built offline on first use."""
    if spec.is_builtin:
        from worker.tiny import save_tiny_pipeline

        name = spec.source.removeprefix("builtin:")
        if name != "tiny":
            raise ModelLoadError(f"unknown built-in model {spec.source!r}")
        return str(save_tiny_pipeline(settings.model_cache_dir / name))
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
        vae_tiling=bool(spec.options.get("vae_tiling", False)),
        # Fused QKV weights cost the CPU's oneDNN ~10 s of first-call setup per shape
        # for no gain at tiny sizes; on CUDA it saves a GEMM per attention.
        fuse_qkv=on_gpu,
    )


def load_model(spec: ModelSpec, settings: Settings, *, warm: bool = True) -> LoadedModel:
    """Load ``spec`` onto its device, apply the fast path and warm it up."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from worker.accel import optimize_pipeline, resolve_device, warm_up

    started = time.perf_counter()
    location = weights_location(spec, settings)
    device = resolve_device(spec.device)
    dtype = getattr(torch, spec.dtype) if device != "cpu" else torch.float32
    local = Path(location).is_dir()
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            location,
            dtype=dtype,
            revision=spec.revision,
            local_files_only=local,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {spec.alias!r} from {location!r}: {e}") from e
    opts = accel_options(spec, device, dtype)
    pipe = optimize_pipeline(pipe, opts)
    if warm:
        warm_up(
            pipe,
            width=spec.width,
            height=spec.height,
            steps=spec.steps,
            batch_size=1,
            strength=spec.strength,
            guidance_scale=spec.guidance_scale,
        )
    revision = spec.revision or (folder_fingerprint(Path(location)) if local else "main")
    seconds = time.perf_counter() - started
    log.info("model %s loaded on %s in %.2fs (revision %s)", spec.alias, device, seconds, revision)
    return LoadedModel(spec=spec, pipe=pipe, device=device, revision=revision, load_seconds=seconds)
