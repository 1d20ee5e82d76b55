"""The model registry: model alias -> where its weights live and how to run it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from shared.adapters import LORA_KINDS
from shared.errors import ConfigError
from shared.presets import load_presets

# img2img: restyle the whole source. inpaint: repaint only where the mask (or the source's
# transparency) says, keeping the rest bit-identical. controlnet-canny: img2img conditioned on
# the source's canny edges, so outlines survive strong restyling. echo: no model at all, the
# source comes back resized: load tests and overhead benchmarks of the farm itself. upscale:
# the source enlarged by a learned upscaler (a spandrel-loadable weights file, worker/upscale.py).
ModelKind = Literal["img2img", "inpaint", "controlnet-canny", "echo", "upscale"]
KINDS: tuple[str, ...] = ("img2img", "inpaint", "controlnet-canny", "echo", "upscale")
# What spandrel reads for an upscale-kind entry's ``source``.
UPSCALE_WEIGHTS = (".safetensors", ".pth")
# The longest side an enlarged output may have (``upscale``; the api refuses beyond it, the
# worker re-checks): a 4096² RGB output is 48 MiB decoded, what one job's encode should hold.
MAX_UPSCALED_SIDE = 4096
BUILTIN_PREFIX = "builtin:"
# The licence of the built-in aliases: no weights of anyone else's, the farm's own code.
BUILTIN_LICENSE = "imgfarm-builtin"
# A diffusers scheduler class name; the worker resolves it (shared/ does not import diffusers).
_SCHEDULER_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*Scheduler$")


@dataclass(frozen=True)
class ModelSpec:
    """One alias: its weights (hub id, local folder or ``builtin:NAME``) and its defaults."""

    alias: str
    source: str
    kind: ModelKind = "img2img"
    dtype: str = "float32"
    device: str = "auto"
    revision: str | None = None
    max_batch: int = 4
    steps: int = 20
    strength: float = 0.75
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    min_size: int = 64
    max_size: int = 1024
    max_steps: int = 150
    # Optional diffusers scheduler class name (e.g. "EulerAncestralDiscreteScheduler"),
    # built with ``from_config`` from the checkpoint's own scheduler config.
    scheduler: str | None = None
    # controlnet-canny only: where the ControlNetModel lives (hub id or local folder);
    # unset means the ``controlnet`` subfolder of ``source``.
    controlnet: str | None = None
    description: str = ""
    # Sizes ("WxH") a compiled worker also warms up at start, beside the default size: any
    # other size compiles on its first job (tens of seconds on the device lane, during which
    # the GPU serves no one). Each costs one compile per batch bucket at boot.
    warm_sizes: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    # Fidelity thresholds an output must meet to pass without a person (worker/fidelity.py);
    # a batch's ``review`` overrides them. Chosen from measurement (README "Fidelity and
    # review"): faithful outputs score structure >= 0.96 and drift <= 1.9 ΔE, broken ones
    # structure <= 0.26 or drift >= 14.
    min_structure: float = 0.5
    max_colour_drift: float = 5.0
    # The weights' licence (an SPDX-style id as the model card names it, e.g.
    # "creativeml-openrail-m") and whether the operator may sell what it renders. An entry
    # that says neither is "unknown" and not for commercial use: nobody promised it is.
    license: str = "unknown"
    commercial_use: bool = False

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(BUILTIN_PREFIX)

    @property
    def served_sizes(self) -> list[tuple[int, int]]:
        """The default size, then each distinct ``warm_sizes`` entry, as (width, height)."""
        sizes = [(self.width, self.height)]
        for text in self.warm_sizes:
            size = parse_size(text)
            if size not in sizes:
                sizes.append(size)
        return sizes

    @property
    def takes_mask(self) -> bool:
        """Only inpaint models read a mask (or the source's alpha as one)."""
        return self.kind == "inpaint"

    @property
    def denoises(self) -> bool:
        """False for ``echo`` and ``upscale``: steps, strength and guidance mean nothing to
        them."""
        return self.kind not in ("echo", "upscale")


def _tiny(alias: str, kind: ModelKind, description: str) -> ModelSpec:
    """A random-weight tiny model built offline: 64 px, 4 steps, CPU-friendly limits."""
    return ModelSpec(
        alias=alias,
        source=f"{BUILTIN_PREFIX}{alias}",
        kind=kind,
        max_batch=4,
        steps=4,
        width=64,
        height=64,
        min_size=32,
        max_size=256,
        max_steps=50,
        description=description,
        # Random weights made by the farm's own code at boot: no third party's terms.
        license=BUILTIN_LICENSE,
        commercial_use=True,
    )


BUILTINS: dict[str, ModelSpec] = {
    "tiny": _tiny(
        "tiny",
        "img2img",
        "Random-weight tiny Stable Diffusion built offline; renders noise-like images.",
    ),
    "tiny-inpaint": _tiny(
        "tiny-inpaint",
        "inpaint",
        "Random-weight tiny inpainting model (9-channel UNet) built offline.",
    ),
    "tiny-controlnet": _tiny(
        "tiny-controlnet",
        "controlnet-canny",
        "Random-weight tiny Stable Diffusion with a canny ControlNet, built offline.",
    ),
    "tiny-upscale": _tiny(
        "tiny-upscale",
        "upscale",
        "Random-weight tiny ESRGAN (4x), built offline; enlarges the source with noise-like "
        "detail.",
    ),
    "echo": ModelSpec(
        alias="echo",
        source="builtin:echo",
        kind="echo",
        device="cpu",
        max_batch=16,
        steps=1,
        strength=1.0,
        guidance_scale=0.0,
        width=512,
        height=512,
        min_size=8,
        max_size=2048,
        max_steps=1,
        description="No model: returns the source resized to the requested size (load tests).",
        license=BUILTIN_LICENSE,
        commercial_use=True,
    ),
}

_FIELDS = {f for f in ModelSpec.__dataclass_fields__ if f != "alias"}
_SIZE = re.compile(r"^\s*(\d{1,5})\s*x\s*(\d{1,5})\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """ "768x512" -> (768, 512); ValueError naming the text otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. '768x512')")
    return int(match[1]), int(match[2])


def _check_warm_sizes(spec: ModelSpec) -> None:
    try:
        sizes = spec.served_sizes
    except ValueError as e:
        raise ConfigError(f"model {spec.alias!r}: warm_sizes: {e}") from e
    for width, height in sizes[1:]:
        if (
            width % 8
            or height % 8
            or not spec.min_size <= min(width, height) <= max(width, height) <= spec.max_size
        ):
            raise ConfigError(
                f"model {spec.alias!r}: warm_sizes: {width}x{height} must be multiples of 8 "
                f"within {spec.min_size}..{spec.max_size}"
            )


def _check_license(spec: ModelSpec) -> None:
    if not isinstance(spec.license, str) or not spec.license.strip():
        raise ConfigError(f"model {spec.alias!r}: license must be a non-empty string")
    if not isinstance(spec.commercial_use, bool):
        raise ConfigError(f"model {spec.alias!r}: commercial_use must be true or false")


def _base_of(alias: str, source: str) -> ModelSpec:
    """What an entry overlays: the built-in of that alias, or the defaults. A built-in alias
    pointed at other weights keeps its defaults but not its licence: the weights are not
    the farm's own any more, so they are "unknown" until the entry says."""
    builtin = BUILTINS.get(alias)
    if builtin is None:
        return ModelSpec(alias=alias, source="")
    if source != builtin.source:
        return replace(builtin, license="unknown", commercial_use=False)
    return builtin


def _spec_from_table(alias: str, table: dict[str, Any]) -> ModelSpec:
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"model {alias!r}: unknown keys {sorted(unknown)}")
    if "source" not in table:
        raise ConfigError(f"model {alias!r}: 'source' is required (hub id or local folder)")
    if "warm_sizes" in table:
        if not isinstance(table["warm_sizes"], list):
            raise ConfigError(f"model {alias!r}: warm_sizes must be a list like ['768x512']")
        table = {**table, "warm_sizes": tuple(str(s) for s in table["warm_sizes"])}
    spec = replace(_base_of(alias, table["source"]), **table)
    if spec.kind not in KINDS:
        raise ConfigError(f"model {alias!r}: kind {spec.kind!r} is not one of {KINDS}")
    _check_license(spec)
    if spec.max_batch < 1:
        raise ConfigError(f"model {alias!r}: max_batch must be at least 1")
    if spec.scheduler is not None and not _SCHEDULER_NAME.match(spec.scheduler):
        raise ConfigError(
            f"model {alias!r}: scheduler {spec.scheduler!r} is not a diffusers scheduler class "
            "name (e.g. 'EulerAncestralDiscreteScheduler')"
        )
    if spec.controlnet is not None and spec.kind != "controlnet-canny":
        raise ConfigError(f"model {alias!r}: 'controlnet' only applies to kind controlnet-canny")
    if (
        not spec.min_size
        <= min(spec.width, spec.height)
        <= max(spec.width, spec.height)
        <= spec.max_size
    ):
        raise ConfigError(f"model {alias!r}: default size must lie within min_size..max_size")
    _check_warm_sizes(spec)
    _check_thresholds(spec)
    _check_upscale_source(spec)
    _check_hotswap_rank(spec)
    return spec


def _check_hotswap_rank(spec: ModelSpec) -> None:
    rank = spec.options.get("lora_hotswap_rank")
    if rank is None:
        return
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(
            f"model {spec.alias!r}: options.lora_hotswap_rank must be an integer >= 1"
        )
    if spec.kind not in LORA_KINDS:
        raise ConfigError(f"model {spec.alias!r}: a {spec.kind} model takes no adapters to hotswap")


def _check_upscale_source(spec: ModelSpec) -> None:
    if spec.kind != "upscale" or spec.is_builtin:
        return
    if not spec.source.lower().endswith(UPSCALE_WEIGHTS):
        raise ConfigError(
            f"model {spec.alias!r}: an upscale model's source is a weights file "
            f"({' or '.join(UPSCALE_WEIGHTS)}), not {spec.source!r}"
        )


def upscaler_of(registry: dict[str, ModelSpec], spec: ModelSpec) -> ModelSpec | None:
    """The upscale-kind entry named by ``spec.options.upscaler``, if any: what enlarges the
    outputs of jobs that ask for ``upscale`` (worker/upscale.py)."""
    alias = spec.options.get("upscaler")
    return None if alias is None else registry[alias]


def _check_upscalers(registry: dict[str, ModelSpec]) -> None:
    """Each ``options.upscaler`` names an upscale-kind entry (checked once all are read)."""
    for spec in registry.values():
        alias = spec.options.get("upscaler")
        if alias is None:
            continue
        if spec.kind == "upscale":
            raise ConfigError(f"model {spec.alias!r}: an upscale model takes no upscaler")
        target = registry.get(alias) if isinstance(alias, str) else None
        if target is None or target.kind != "upscale":
            raise ConfigError(
                f"model {spec.alias!r}: options.upscaler {alias!r} is not an upscale-kind model"
            )


def _check_thresholds(spec: ModelSpec) -> None:
    if not 0 <= spec.min_structure <= 1:
        raise ConfigError(f"model {spec.alias!r}: min_structure must lie within 0..1")
    if not 0 <= spec.max_colour_drift <= 100:
        raise ConfigError(f"model {spec.alias!r}: max_colour_drift must lie within 0..100")


def load_registry(path: Path | None) -> dict[str, ModelSpec]:
    """Built-in aliases, overlaid with those of the TOML file at ``path`` (``[models.ALIAS]``)."""
    registry = dict(BUILTINS)
    if path is None:
        return registry
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read model registry {path}: {e}") from e
    for alias, table in data.get("models", {}).items():
        registry[alias] = _spec_from_table(alias, table)
    _check_upscalers(registry)
    # The same file's [presets.*] (shared/presets.py): every process that reads the
    # registry refuses a bad preset at start, not at the first job that names it.
    load_presets(path)
    return registry
