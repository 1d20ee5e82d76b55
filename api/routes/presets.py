"""``/v1/presets``: the marketplace presets a job may ask for, with their rules, so the
console and clients show what each output will be (size, background, format, file limit)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import SettingsDep, TeamDep
from api.errors import KEYED_ERRORS
from shared.images import OutputFormat
from shared.presets import Background, Fit, load_presets

router = APIRouter(prefix="/v1/presets", tags=["presets"], responses=KEYED_ERRORS)


class PresetPublic(BaseModel):
    name: str = Field(description="What a job's `preset` names, e.g. `amazon-main`.")
    label: str = Field(description="For people, e.g. 'Amazon main image'.")
    width: int = Field(description="Output width in pixels.")
    height: int = Field(description="Output height in pixels.")
    fit: Fit = Field(
        description="crop: the render scaled to cover and center-cropped; pad: scaled to fit "
        "inside on white; product: the cut-out product alone, scaled to span `product_fill` "
        "of the frame."
    )
    background: Background = Field(
        description="render: the rendered image; white: pure RGB (255, 255, 255) around the "
        "cut-out product."
    )
    format: OutputFormat = Field(description="png, jpeg or webp.")
    quality: int = Field(description="JPEG/WebP quality it is encoded at first (1..100).")
    max_bytes: int | None = Field(
        description="The channel's file size limit: a larger file is encoded again at lower "
        "quality; null: none."
    )
    min_product_fraction: float | None = Field(
        description="fit product: the least share of the frame's width or height the "
        "product's bounding box spans (Amazon: 0.85); null: no rule."
    )
    product_fill: float = Field(
        description="fit product: the share of the frame's width or height the product spans."
    )
    needs_cutout: bool = Field(
        description="true: made of the product alone, so the job needs a cut-out (an inpaint "
        'model with a mask or `mask: "auto"`, or a transparent PNG source).'
    )
    source: str = Field(description="The channel's published rule the figures come from.")


class PresetsPublic(BaseModel):
    presets: list[PresetPublic] = Field(description="Every preset, by name.")


@router.get("", response_model=PresetsPublic)
def list_presets(_: TeamDep, settings: SettingsDep) -> PresetsPublic:
    """Every marketplace preset (built-in, or the operator's registry file's `[presets.*]`)
    with its rules; each one a job's `preset` names adds one output made to them."""
    presets = load_presets(settings.models)
    return PresetsPublic(
        presets=[PresetPublic(**presets[name].as_dict()) for name in sorted(presets)]
    )
