"""``/v1/models``: what can be rendered, with defaults and limits."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RegistryDep, TeamDep
from shared.schemas import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelsPublic)
def list_models(_: TeamDep, registry: RegistryDep) -> ModelsPublic:
    return ModelsPublic(
        models=[
            ModelPublic(
                alias=spec.alias,
                kind=spec.kind,
                description=spec.description,
                defaults={
                    "steps": spec.steps,
                    "strength": spec.strength,
                    "guidance_scale": spec.guidance_scale,
                    "width": spec.width,
                    "height": spec.height,
                },
                limits={
                    "min_size": spec.min_size,
                    "max_size": spec.max_size,
                    "max_steps": spec.max_steps,
                    "max_batch": spec.max_batch,
                },
            )
            for spec in sorted(registry.values(), key=lambda s: s.alias)
        ]
    )
