"""The model registry: model alias -> where its weights live and how to run it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from shared.errors import ConfigError

ModelKind = Literal["img2img"]
KINDS: tuple[str, ...] = ("img2img",)
BUILTIN_PREFIX = "builtin:"


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
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(BUILTIN_PREFIX)


BUILTINS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(
        alias="tiny",
        source="builtin:tiny",
        max_batch=4,
        steps=4,
        width=64,
        height=64,
        min_size=32,
        max_size=256,
        max_steps=50,
        description="Random-weight tiny Stable Diffusion built offline; renders noise-like images.",
    ),
}

_FIELDS = {f for f in ModelSpec.__dataclass_fields__ if f != "alias"}


def _spec_from_table(alias: str, table: dict[str, Any]) -> ModelSpec:
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"model {alias!r}: unknown keys {sorted(unknown)}")
    if "source" not in table:
        raise ConfigError(f"model {alias!r}: 'source' is required (hub id or local folder)")
    spec = replace(BUILTINS.get(alias, ModelSpec(alias=alias, source="")), **table)
    if spec.kind not in KINDS:
        raise ConfigError(f"model {alias!r}: kind {spec.kind!r} is not one of {KINDS}")
    if (
        not spec.min_size
        <= min(spec.width, spec.height)
        <= max(spec.width, spec.height)
        <= spec.max_size
    ):
        raise ConfigError(f"model {alias!r}: default size must lie within min_size..max_size")
    return spec


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
    return registry
