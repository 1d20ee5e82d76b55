"""Marketplace presets: the rules an output is brought to after rendering (issue 18).

A preset is data, not code: the built-ins live in shared/presets.toml (each names the
channel's published rule it follows), and an operator's registry file (the ``[models.*]``
file, ``IMGFARM_MODELS``) may override one or add its own as ``[presets.NAME]`` tables with
the same keys. The api checks the names a job asks for against them and lists them
(``GET /v1/presets``); the worker applies them (worker/presets.py).
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from shared.errors import ConfigError
from shared.images import EXTENSIONS, OutputFormat

# crop: scale to cover the frame and center-crop; pad: scale to fit inside it on white;
# product: the cut-out product alone on the background, scaled to span ``product_fill``.
Fit = Literal["crop", "pad", "product"]
# render: the rendered image; white: pure (255, 255, 255) around the cut-out product.
Background = Literal["render", "white"]
FITS: tuple[str, ...] = get_args(Fit)
BACKGROUNDS: tuple[str, ...] = get_args(Background)
# Channels' limits are far below this; it keeps a typo (16000 for 1600) from costing GBs.
MAX_SIDE = 8192
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass(frozen=True)
class Preset:
    """One channel's rules for an image: frame, fit, background and file."""

    name: str
    label: str
    width: int
    height: int
    fit: Fit = "crop"
    background: Background = "render"
    format: OutputFormat = "jpeg"
    quality: int = 90
    max_bytes: int | None = None
    min_product_fraction: float | None = None
    product_fill: float = 0.9
    source: str = ""

    @property
    def needs_cutout(self) -> bool:
        """Whether it is made of the product alone: the job must have a cut-out."""
        return self.fit == "product" or self.background == "white"

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def as_dict(self) -> dict[str, Any]:
        """The rules as ``GET /v1/presets`` shows them."""
        return {**asdict(self), "needs_cutout": self.needs_cutout}


_FIELDS = {f for f in Preset.__dataclass_fields__ if f != "name"}
_REQUIRED = ("label", "width", "height")


def _check(preset: Preset) -> Preset:
    where = f"preset {preset.name!r}"
    for name in ("width", "height"):
        value = getattr(preset, name)
        if not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise ConfigError(f"{where}: {name} must be a whole number within 1..{MAX_SIDE}")
    if preset.fit not in FITS:
        raise ConfigError(f"{where}: fit {preset.fit!r} is not one of {FITS}")
    if preset.background not in BACKGROUNDS:
        raise ConfigError(f"{where}: background {preset.background!r} is not one of {BACKGROUNDS}")
    if preset.format not in EXTENSIONS:
        raise ConfigError(f"{where}: format {preset.format!r} is not one of {tuple(EXTENSIONS)}")
    if not isinstance(preset.quality, int) or not 1 <= preset.quality <= 100:
        raise ConfigError(f"{where}: quality must be a whole number within 1..100")
    if preset.max_bytes is not None and (
        not isinstance(preset.max_bytes, int) or preset.max_bytes < 1024
    ):
        raise ConfigError(f"{where}: max_bytes must be a whole number of at least 1024")
    if not 0 < preset.product_fill <= 1:
        raise ConfigError(f"{where}: product_fill must lie within 0..1")
    least = preset.min_product_fraction
    if least is not None and not 0 < least <= preset.product_fill:
        raise ConfigError(f"{where}: min_product_fraction must lie within 0..product_fill")
    return preset


def _preset_from_table(name: str, table: Any, base: Preset | None) -> Preset:
    if not _NAME.match(name):
        raise ConfigError(f"preset {name!r}: names are lowercase letters, digits and '-'")
    if not isinstance(table, dict):
        raise ConfigError(f"preset {name!r}: must be a table of keys")
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"preset {name!r}: unknown keys {sorted(unknown)}")
    if base is None:
        missing = [key for key in _REQUIRED if key not in table]
        if missing:
            raise ConfigError(f"preset {name!r}: {', '.join(missing)} required")
        return _check(Preset(name=name, **table))
    return _check(replace(base, **table))  # an override changes only the keys it gives


def _tables(data: dict[str, Any], where: str) -> dict[str, Any]:
    tables = data.get("presets", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'presets' must be tables like [presets.NAME]")
    return cast(dict[str, Any], tables)


@functools.cache
def builtin_presets() -> MappingProxyType[str, Preset]:
    """The presets of shared/presets.toml (package data)."""
    text = files("shared").joinpath("presets.toml").read_text()
    tables = _tables(tomllib.loads(text), "shared/presets.toml")
    return MappingProxyType(
        {name: _preset_from_table(name, table, None) for name, table in tables.items()}
    )


@functools.cache
def load_presets(path: Path | None) -> MappingProxyType[str, Preset]:
    """Built-in presets, overlaid with the ``[presets.NAME]`` tables of the registry file at
    ``path``. Read once per path per process, like the registry itself (a changed file takes
    a restart); ConfigError names the bad key."""
    presets = dict(builtin_presets())
    if path is None:
        return MappingProxyType(presets)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read model registry {path}: {e}") from e
    for name, table in _tables(data, str(path)).items():
        presets[name] = _preset_from_table(name, table, presets.get(name))
    return MappingProxyType(presets)
