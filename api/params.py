"""Fill a request's optional knobs from the model's defaults and check them against its limits."""

from __future__ import annotations

import secrets

from shared.errors import InvalidRequest
from shared.registry import ModelSpec
from shared.schemas import JobCreate, RenderParams

SIZE_MULTIPLE = 8


def model_spec(registry: dict[str, ModelSpec], alias: str) -> ModelSpec:
    spec = registry.get(alias)
    if spec is None:
        known = ", ".join(sorted(registry))
        raise InvalidRequest("model", f"unknown model {alias!r}; known models: {known}")
    return spec


def _check_size(field: str, value: int, spec: ModelSpec) -> None:
    if value % SIZE_MULTIPLE:
        raise InvalidRequest(field, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
    if not spec.min_size <= value <= spec.max_size:
        raise InvalidRequest(
            field, f"must be between {spec.min_size} and {spec.max_size} for model {spec.alias!r}"
        )


def resolve_params(spec: ModelSpec, body: JobCreate) -> RenderParams:
    """Exactly what the worker will render. A missing seed is drawn now and recorded."""
    steps = spec.steps if body.steps is None else body.steps
    strength = spec.strength if body.strength is None else body.strength
    if steps > spec.max_steps:
        raise InvalidRequest("steps", f"must be at most {spec.max_steps} for model {spec.alias!r}")
    if int(steps * strength) < 1:
        raise InvalidRequest(
            "strength", f"strength {strength} x steps {steps} leaves no denoising step"
        )
    width = spec.width if body.width is None else body.width
    height = spec.height if body.height is None else body.height
    _check_size("width", width, spec)
    _check_size("height", height, spec)
    return RenderParams(
        strength=strength,
        steps=steps,
        guidance_scale=spec.guidance_scale if body.guidance_scale is None else body.guidance_scale,
        seed=secrets.randbelow(2**31) if body.seed is None else body.seed,
        width=width,
        height=height,
        output_format=body.output_format,
    )
