"""Fill a request's optional knobs from the model's defaults and check them against its limits."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import cast, get_args

from shared.errors import InvalidRequest
from shared.images import has_transparency, open_rgb, open_rgba
from shared.presets import Preset
from shared.registry import MAX_UPSCALED_SIDE, ModelSpec
from shared.schemas import MASK_AUTO, CutoutMethod, RenderKnobs, RenderParams

SIZE_MULTIPLE = 8


def model_spec(registry: dict[str, ModelSpec], alias: str) -> ModelSpec:
    spec = registry.get(alias)
    if spec is None:
        known = ", ".join(sorted(registry))
        raise InvalidRequest("model", f"unknown model {alias!r}; known models: {known}")
    return spec


def check_commercial_use(spec: ModelSpec, knobs: RenderKnobs) -> None:
    """A request that needs to sell its outputs names only a model whose licence allows it."""
    if knobs.require_commercial_use and not spec.commercial_use:
        raise InvalidRequest(
            "model",
            f"model {spec.alias!r} (licence {spec.license}) is not for commercial use, and "
            "require_commercial_use is true",
        )


def _check_size(field: str, value: int, spec: ModelSpec) -> None:
    if value % SIZE_MULTIPLE:
        raise InvalidRequest(field, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
    if not spec.min_size <= value <= spec.max_size:
        raise InvalidRequest(
            field, f"must be between {spec.min_size} and {spec.max_size} for model {spec.alias!r}"
        )


def _check_upscale(factor: int | None, width: int, height: int) -> None:
    """The enlarged output's longest side stays within ``MAX_UPSCALED_SIDE``. (An upscale
    model's own scale is the worker's to check: it refuses to start with a ``max_size``
    whose enlargement would be over.)"""
    if factor is not None and max(width, height) * factor > MAX_UPSCALED_SIDE:
        raise InvalidRequest(
            "upscale",
            f"{width}x{height} x {factor} would be {width * factor}x{height * factor}; the "
            f"longest side may be at most {MAX_UPSCALED_SIDE} px",
        )


def resolve_params(spec: ModelSpec, body: RenderKnobs) -> RenderParams:
    """Exactly what the worker will render. A missing seed is drawn now and recorded."""
    steps = spec.steps if body.steps is None else body.steps
    strength = spec.strength if body.strength is None else body.strength
    if steps > spec.max_steps:
        raise InvalidRequest("steps", f"must be at most {spec.max_steps} for model {spec.alias!r}")
    # echo never denoises: its steps and strength are recorded, not used.
    if spec.denoises and int(steps * strength) < 1:
        raise InvalidRequest(
            "strength", f"strength {strength} x steps {steps} leaves no denoising step"
        )
    width = spec.width if body.width is None else body.width
    height = spec.height if body.height is None else body.height
    _check_size("width", width, spec)
    _check_size("height", height, spec)
    _check_upscale(body.upscale, width, height)
    return RenderParams(
        strength=strength,
        steps=steps,
        guidance_scale=spec.guidance_scale if body.guidance_scale is None else body.guidance_scale,
        seed=secrets.randbelow(2**31) if body.seed is None else body.seed,
        width=width,
        height=height,
        output_format=body.output_format,
        resize_mode=body.resize_mode,
        upscale=body.upscale,
        presets=list(dict.fromkeys(body.preset)),  # each preset once, in the order asked
    )


def check_mask_given(spec: ModelSpec, mask: str | None, field: str = "mask") -> None:
    """Refuse a mask for a model that takes none (before anything is fetched)."""
    if mask is not None and not spec.takes_mask:
        raise InvalidRequest(
            field, f"model {spec.alias!r} is of kind {spec.kind}; only inpaint models take a mask"
        )


def resolve_cutout(
    spec: ModelSpec, cutout: CutoutMethod | None, masks: Sequence[tuple[str | None, str]]
) -> CutoutMethod | None:
    """How the worker cuts the product out of jobs whose ``mask`` is ``"auto"``: the
    request's ``cutout``, else the model's ``options.cutout``, else ``studio``; None when no
    mask is auto. ``masks``: each job's (mask, its field), already checked against the kind
    (``check_mask_given``). The jobs of one request share their params, so a batch cuts
    out every image or none."""
    auto = [mask == MASK_AUTO for mask, _ in masks]
    if any(auto) and not all(auto):
        field = next(f for (_, f), a in zip(masks, auto, strict=True) if not a)
        raise InvalidRequest(
            field, 'mask "auto" applies to every image of a batch or to none; give it here too'
        )
    if not any(auto):
        if cutout is not None:
            raise InvalidRequest("cutout", 'only applies with mask "auto"')
        return None
    method = cutout or spec.options.get("cutout", "studio")
    if method not in get_args(CutoutMethod):  # the registry's typo: say so, name the knob
        raise InvalidRequest(
            "cutout", f"model {spec.alias!r} has options.cutout {method!r}; give cutout"
        )
    if method == "segmentation" and not spec.options.get("segmentation_model"):
        raise InvalidRequest(
            "cutout",
            f"model {spec.alias!r} has no segmentation model (options.segmentation_model); "
            "use studio",
        )
    return cast(CutoutMethod, method)


def check_inpaint_inputs(
    spec: ModelSpec, source: bytes, mask: bytes | None, field: str = "mask"
) -> None:
    """An inpaint job must leave something to repaint: refuse what would only echo the source.

    With a mask: it must have the source's size (one resize geometry maps both) and some
    white. Without one: the source must have transparent pixels (those get repainted).
    Both arrive checked (decodable, within the limits) and are compared as the worker
    decodes them: upright, so a phone photo tagged "rotate 90°" takes the mask drawn on it
    as it is seen. Errors name ``field`` (``images[3].mask`` for a batch's fourth image).
    """
    if not spec.takes_mask:
        return
    image = open_rgba(source)
    if mask is None:
        if not has_transparency(image):
            raise InvalidRequest(
                field,
                f"model {spec.alias!r} inpaints: give a mask (white = repaint, black = keep) "
                "or a source PNG whose transparent pixels are to be repainted",
            )
        return
    decoded = open_rgb(mask)
    if decoded.size != image.size:
        raise InvalidRequest(
            field,
            f"is {decoded.width}x{decoded.height} but the image is "
            f"{image.width}x{image.height} (upright); the mask must have the image's size",
        )
    # Luminance below 128 keeps (worker/masks.py); a mask without any brighter pixel
    # repaints nothing.
    _, brightest = cast(tuple[int, int], decoded.convert("L").getextrema())
    if brightest < 128:
        raise InvalidRequest(field, "is all black: nothing to repaint (white = repaint)")


def check_presets(presets: Mapping[str, Preset], names: Sequence[str]) -> list[Preset]:
    """The presets ``names`` asks for (shared/presets.py), each once, in order; an unknown
    one is refused naming it (``preset``, or ``preset[1]`` in a list) and the known ones."""
    for index, name in enumerate(names):
        if name not in presets:
            field = "preset" if len(names) == 1 else f"preset[{index}]"
            known = ", ".join(sorted(presets))
            raise InvalidRequest(field, f"unknown preset {name!r}; known presets: {known}")
    return [presets[name] for name in dict.fromkeys(names)]


def check_preset_cutout(presets: Sequence[Preset], source: bytes, image_field: str) -> None:
    """A preset made of the product alone (``amazon-main``: the product on white) needs a
    cut-out. An inpaint job always has one (its kept pixels); for other kinds the source
    must be transparent around the product. Checked only when such a preset is asked."""
    needing = [p.name for p in presets if p.needs_cutout]
    if needing and not has_transparency(open_rgba(source)):
        raise InvalidRequest(
            "preset",
            f"{', '.join(needing)} is the product alone on white, and {image_field} has no "
            'cut-out: use an inpaint model with mask "auto" (the product found on a plain '
            "background) or a mask, or give a transparent PNG of the product",
        )
