"""``/v1/models``: what can be rendered, with kinds, defaults, limits and online workers."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RegistryDep, SessionDep, SettingsDep, TeamDep
from api.errors import KEYED_ERRORS
from api.params import SIZE_MULTIPLE
from shared.images import RESIZE_MODES
from shared.registry import ModelSpec
from shared.schemas import ModelPublic, ModelsPublic
from shared.workers import ModelWorkers, model_workers

router = APIRouter(prefix="/v1/models", tags=["models"], responses=KEYED_ERRORS)


def model_public(spec: ModelSpec, workers: ModelWorkers) -> ModelPublic:
    """One alias as clients see it: no weights locations, which may be private."""
    return ModelPublic(
        alias=spec.alias,
        kind=spec.kind,
        description=spec.description,
        license=spec.license,
        commercial_use=spec.commercial_use,
        defaults={
            "steps": spec.steps,
            "strength": spec.strength,
            "guidance_scale": spec.guidance_scale,
            "width": spec.width,
            "height": spec.height,
            "scheduler": spec.scheduler,
        },
        limits={
            "min_size": spec.min_size,
            "max_size": spec.max_size,
            "size_multiple": SIZE_MULTIPLE,
            "max_steps": spec.max_steps,
            "max_batch": spec.max_batch,
            "resize_modes": list(RESIZE_MODES),
            "takes_mask": spec.takes_mask,
        },
        workers=workers.online,
        last_seen_at=workers.last_seen_at,
        warning=workers.warning,
    )


@router.get("", response_model=ModelsPublic)
def list_models(
    _: TeamDep, registry: RegistryDep, session: SessionDep, settings: SettingsDep
) -> ModelsPublic:
    """Every model alias: kind, defaults, limits, the workers online for it now and, when
    there are none, a warning saying since when (its jobs wait queued until one starts)."""
    workers = model_workers(session, settings.lease_seconds, list(registry))
    return ModelsPublic(
        models=[model_public(spec, workers[alias]) for alias, spec in sorted(registry.items())]
    )
