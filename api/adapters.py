"""Brand style adapters (LoRA): register a team's safetensors file under a name, and turn a
request's ``adapters: [{name, scale}]`` into the digests its jobs render with.

A file is checked before anything is stored: within ``max_adapter_bytes``, a safetensors
file (its header parsed by the ``safetensors`` library, which reads tensors and never runs
code: a pickled ``.bin``/``.pt`` is refused, never unpickled) whose every tensor is a LoRA
weight of a diffusers UNet or text encoder. Whether its shapes fit a given model is known
only when a worker loads it (a 768-wide LoRA on a 1024-wide UNet): that job fails, saying so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import safetensors
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.adapters import LORA_KINDS, adapter_key
from shared.errors import InvalidRequest, NotFound
from shared.models import Adapter, Team, utcnow
from shared.registry import ModelSpec
from shared.schemas import AdapterPublic, AdapterRef, AdapterUse
from shared.storage import Storage, sha256_hex

# Where the LoRA weights of a diffusers checkpoint sit: diffusers' own format (``unet.…``,
# ``text_encoder.…``), and kohya's (``lora_unet_…``, ``lora_te_…``), which diffusers'
# load_lora_weights converts.
LORA_PREFIXES = ("unet.", "text_encoder.", "lora_unet_", "lora_te_", "lora_te1_")


@dataclass(frozen=True)
class CheckedAdapter:
    """A file that passed every check: its bytes and digest."""

    data: bytes
    sha256: str


def check_adapter_file(data: bytes, field: str, limit: int) -> CheckedAdapter:
    """Refuse (4xx naming ``field``) what is not a LoRA safetensors file of at most ``limit``
    bytes; nothing is stored."""
    if len(data) > limit:
        raise InvalidRequest(field, f"is larger than {limit} bytes", status_code=413)
    keys = _safetensors_keys(data, field)
    if not keys:
        raise InvalidRequest(field, "holds no tensors")
    not_lora = sorted(k for k in keys if "lora" not in k.lower())
    if not_lora:
        raise InvalidRequest(
            field, f"holds tensors that are not LoRA weights, e.g. {not_lora[0]!r}"
        )
    if not any(k.startswith(LORA_PREFIXES) for k in keys):
        raise InvalidRequest(
            field,
            "holds no LoRA weights for a diffusers UNet or text encoder (keys starting with "
            + ", ".join(LORA_PREFIXES)
            + ")",
        )
    return CheckedAdapter(data, sha256_hex(data))


def _safetensors_keys(data: bytes, field: str) -> list[str]:
    # safe_open reads a file: the header is parsed and checked against the file's length
    # (offsets, dtypes, shapes); the tensors themselves are not read.
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as spool:
        spool.write(data)
        spool.flush()
        try:
            with safetensors.safe_open(spool.name, framework="numpy") as f:
                return list(f.keys())
        except (safetensors.SafetensorError, OSError, ValueError) as e:
            raise InvalidRequest(
                field, f"is not a safetensors file ({e}); pickled .bin/.pt weights are refused"
            ) from e


def register_adapter(
    session: Session, storage: Storage, team: Team, name: str, checked: CheckedAdapter
) -> Adapter:
    """Store the file (once per team and content) and point ``name`` at it; the caller
    commits. A name registered again points at the new file from now on: jobs accepted
    before keep the digest they pinned (and its object)."""
    key = adapter_key(team.id, checked.sha256)
    if not storage.exists(key):
        storage.put(key, checked.data, "application/octet-stream")
    adapter = session.scalar(
        select(Adapter).where(Adapter.team_id == team.id, Adapter.name == name).with_for_update()
    )
    if adapter is None:
        adapter = Adapter(team_id=team.id, name=name)
        session.add(adapter)
    adapter.sha256 = checked.sha256
    adapter.object_key = key
    adapter.size_bytes = len(checked.data)
    adapter.created_at = utcnow()
    session.flush()
    return adapter


def list_adapters(session: Session, team: Team) -> list[Adapter]:
    return list(
        session.scalars(select(Adapter).where(Adapter.team_id == team.id).order_by(Adapter.name))
    )


def delete_adapter(session: Session, team: Team, name: str) -> None:
    """Remove the name (404 if the team has none such); the caller commits. Its file stays:
    queued jobs pinned to its digest still render with it."""
    deleted = session.execute(
        delete(Adapter).where(Adapter.team_id == team.id, Adapter.name == name)
    )
    if deleted.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no adapter named {name!r}")


def adapter_public(adapter: Adapter) -> AdapterPublic:
    return AdapterPublic(
        name=adapter.name,
        sha256=adapter.sha256,
        size_bytes=adapter.size_bytes,
        created_at=adapter.created_at,
    )


def resolve_adapters(
    session: Session, team: Team, spec: ModelSpec, refs: Sequence[AdapterRef]
) -> list[AdapterUse]:
    """Each named adapter of ``team``, pinned to its file's digest; 422 naming
    ``adapters[i].name`` for a name the team has not registered (another team's included),
    or ``adapters`` for a model that takes no LoRA."""
    if not refs:
        return []
    if spec.kind not in LORA_KINDS:
        raise InvalidRequest(
            "adapters",
            f"model {spec.alias!r} is of kind {spec.kind}, which takes no adapters; kinds "
            f"that do: {', '.join(sorted(LORA_KINDS))}",
        )
    seen: dict[str, int] = {}
    for i, ref in enumerate(refs):
        if ref.name in seen:
            raise InvalidRequest(
                f"adapters[{i}].name", f"{ref.name!r} is named twice (adapters[{seen[ref.name]}])"
            )
        seen[ref.name] = i
    found = {
        a.name: a.sha256
        for a in session.scalars(
            select(Adapter).where(Adapter.team_id == team.id, Adapter.name.in_(seen))
        )
    }
    uses = []
    for i, ref in enumerate(refs):
        if ref.name not in found:
            raise InvalidRequest(
                f"adapters[{i}].name",
                f"no adapter named {ref.name!r} in this team (GET /v1/adapters lists them)",
            )
        uses.append(AdapterUse(name=ref.name, scale=ref.scale, sha256=found[ref.name]))
    return uses
