"""Render one job: the steps read like a diffusers pipeline's ``__call__``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from shared.errors import PermanentRenderError
from shared.images import CONTENT_TYPES, EXTENSIONS, encode_image, fit_crop, open_rgb
from shared.models import Job
from shared.schemas import RenderParams
from shared.storage import Storage, output_key
from worker.pipelines import LoadedModel


@dataclass(frozen=True)
class RenderResult:
    """What a render produced and how, ready for ``mark_succeeded``."""

    outputs: list[dict[str, Any]]
    provenance: dict[str, Any]
    seconds: float = field(default=0.0)


def check_inputs(model: LoadedModel, params: RenderParams) -> None:
    spec = model.spec
    for name in ("width", "height"):
        value = getattr(params, name)
        if value % 8 or not spec.min_size <= value <= spec.max_size:
            raise PermanentRenderError(f"{name}={value} is outside {spec.alias}'s limits")
    if int(params.steps * params.strength) < 1:
        raise PermanentRenderError("strength x steps leaves no denoising step")


def run_pipeline(
    model: LoadedModel,
    prompts: list[str],
    negative_prompts: list[str | None],
    sources: list[Image.Image],
    seeds: list[int],
    params: RenderParams,
) -> list[Image.Image]:
    """One pipeline call for compatible items; one generator per item keeps each reproducible."""
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    negatives = (
        None if all(n is None for n in negative_prompts) else [n or "" for n in negative_prompts]
    )
    with torch.inference_mode():
        result = model.pipe(
            prompt=prompts,
            negative_prompt=negatives,
            image=sources,
            strength=params.strength,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            generator=generators,
            output_type="pil",
        )
    return list(result.images)


def render_job(model: LoadedModel, storage: Storage, job: Job, worker: str) -> RenderResult:
    """Render ``job`` and store its output under its deterministic key."""
    started = time.perf_counter()
    # 1. check inputs
    params = RenderParams(**job.params)
    check_inputs(model, params)
    # 2. fetch sources
    try:
        source = fit_crop(open_rgb(storage.get(job.source_key)), params.width, params.height)
    except OSError as e:
        raise PermanentRenderError(f"source image cannot be decoded: {e}") from e
    # 3. run pipeline
    (image,) = run_pipeline(
        model, [job.prompt], [job.negative_prompt], [source], [params.seed], params
    )
    render_seconds = time.perf_counter() - started
    # 4. encode
    data = encode_image(image, params.output_format)
    provenance = {
        "model": model.spec.alias,
        "source": model.spec.source,
        "revision": model.revision,
        "params": params.model_dump(),
        "batch_size": 1,
        "worker": worker,
        "device": model.device,
        "render_seconds": round(render_seconds, 4),
    }
    # 5. store
    key = output_key(job.team_id, job.id, 0, EXTENSIONS[params.output_format])
    content_type = CONTENT_TYPES[params.output_format]
    storage.put(key, data, content_type, metadata=_object_metadata(job.id, provenance))
    outputs = [
        {"key": key, "width": image.width, "height": image.height, "content_type": content_type}
    ]
    return RenderResult(
        outputs=outputs, provenance=provenance, seconds=time.perf_counter() - started
    )


def _object_metadata(job_id: uuid.UUID, provenance: dict[str, Any]) -> dict[str, str]:
    # S3 user metadata is flat ASCII strings; keep the provenance findable from the object.
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
