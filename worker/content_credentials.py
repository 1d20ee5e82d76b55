"""Signed C2PA manifests ("Content Credentials") for the teams whose operator gave them a
certificate: the output's history, signed, inside the file.

The operator points ``IMGFARM_C2PA_SIGNERS`` at a TOML file mapping team names to a
certificate chain and private key (docs/operations.md). Only the worker reads it, at boot;
the api never does, and no route returns any of it. A team without an entry gets the XMP
label only (worker/labels.py).

Each manifest says: the source was opened (``c2pa.opened``, the source as ingredient
``parentOf``), then edited by the model (``c2pa.edited`` with the IPTC digital source type,
the model as ``softwareAgent``), or, for ``echo``, only resized (``c2pa.resized``). It signs
the bytes that already carry the XMP label: signing comes last, as any later change would
break the signature's hash of the file.
"""

from __future__ import annotations

import io
import json
import logging
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import ConfigError
from shared.images import CONTENT_TYPES, EXTENSIONS, OutputFormat, encode_image
from shared.models import Team
from worker.labels import Label, generator

# c2pa is imported where a signing needs it: only teams the operator gave a certificate sign,
# so a worker (or a bench on a machine without the wheel) that signs nothing never loads it.
if TYPE_CHECKING:
    import c2pa

log = logging.getLogger(__name__)

ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
# The ingredient's label, which the opened action's ingredientIds point at.
SOURCE_INGREDIENT = "source"
# A custom assertion with the same provenance as the XMP label, under the signature.
PROVENANCE_ASSERTION = "dev.imgfarm.provenance"
# No thumbnails in the manifest (c2pa makes one of the output and one of the source by
# default): at 512² they were bigger than the output itself (a 32 KB webp became 898 KB,
# ~90 ms more per image); without them a manifest adds ~3.4 KB and ~2 ms.
BUILDER_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


@dataclass(frozen=True)
class SigningCredential:
    """One team's certificate chain (PEM, leaf first) and private key (PEM, PKCS#8)."""

    team: str
    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    algorithm: str = "es256"

    def signer(self) -> c2pa.Signer:
        """A c2pa signer for one signing (c2pa signers are not shared between threads)."""
        import c2pa

        info = c2pa.C2paSignerInfo(
            alg=self.algorithm.encode(),
            sign_cert=self.cert_chain,
            private_key=self.private_key,
            ta_url=None,
        )
        return c2pa.Signer.from_info(info)


def load_signing_credentials(path: Path) -> dict[str, SigningCredential]:
    """The operator's file: ``[teams.NAME]`` with ``cert_chain`` and ``private_key`` paths
    (relative ones from the file's folder) and an optional ``algorithm``. Each is tried
    once here, so a bad certificate stops the worker at boot, not at its first output."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read C2PA signers {path}: {e}") from e
    credentials = {}
    for team, table in data.get("teams", {}).items():
        credentials[team] = _credential(path.parent, team, table)
    return credentials


def _credential(folder: Path, team: str, table: dict[str, Any]) -> SigningCredential:
    unknown = set(table) - {"cert_chain", "private_key", "algorithm"}
    if unknown:
        raise ConfigError(f"C2PA signer of team {team!r}: unknown keys {sorted(unknown)}")
    algorithm = str(table.get("algorithm", "es256"))
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"C2PA signer of team {team!r}: algorithm must be one of {ALGORITHMS}")
    pems = {}
    for name in ("cert_chain", "private_key"):
        if name not in table:
            raise ConfigError(f"C2PA signer of team {team!r}: {name} (a PEM file) is required")
        try:
            pems[name] = (folder / str(table[name])).read_bytes()
        except OSError as e:
            raise ConfigError(f"C2PA signer of team {team!r}: {name}: {e}") from e
    credential = SigningCredential(team, pems["cert_chain"], pems["private_key"], algorithm)
    import c2pa

    try:
        credential.signer().close()
    except c2pa.C2paError as e:
        raise ConfigError(f"C2PA signer of team {team!r} is unusable: {e}") from e
    return credential


@dataclass(frozen=True)
class ContentCredentials:
    """The signing credentials of this worker, by team id (empty: nobody signs)."""

    by_team: dict[uuid.UUID, SigningCredential] = field(default_factory=dict)

    def for_team(self, team_id: uuid.UUID) -> SigningCredential | None:
        return self.by_team.get(team_id)


def resolve_teams(session: Session, by_name: dict[str, SigningCredential]) -> ContentCredentials:
    """Credentials by team id. A name no team has yet is logged and skipped: a worker
    started before the team existed signs for it after its next restart."""
    if not by_name:
        return ContentCredentials()
    rows = session.execute(select(Team.name, Team.id).where(Team.name.in_(by_name))).tuples()
    ids = dict(rows.all())
    for name in sorted(set(by_name) - set(ids)):
        log.warning("C2PA signer for team %r: no such team; its outputs are not signed", name)
    return ContentCredentials({ids[name]: by_name[name] for name in ids})


@dataclass(frozen=True)
class Ingredient:
    """The source an output was made from, as the manifest names it."""

    title: str
    content_type: str
    data: bytes


def source_ingredient(source_key: str, data: bytes, resized: Image.Image) -> Ingredient:
    """The source as the team gave it, titled by its content hash (the last part of its
    content-addressed key); a format C2PA cannot read (BMP) goes in as it was rendered
    from: brought to the output size, as PNG."""
    import c2pa

    digest = source_key.rsplit("/", 1)[-1]
    with Image.open(io.BytesIO(data)) as img:
        content_type = Image.MIME.get(img.format or "", "")
    if img.format == "MPO":
        content_type = "image/jpeg"
    if content_type not in c2pa.Builder.get_supported_mime_types():
        return Ingredient(f"{digest} (as rendered from)", "image/png", encode_image(resized, "png"))
    return Ingredient(digest, content_type, data)


def manifest_definition(label: Label, fmt: OutputFormat, agent: dict[str, str]) -> dict[str, Any]:
    """The manifest of one output: opened the source, then edited it with ``agent`` (the
    model) as ``label`` says; ``echo`` (no digital source type) only resized it."""
    if label.digital_source_type is None:
        made: dict[str, Any] = {"action": "c2pa.resized", "softwareAgent": agent}
    else:
        made = {
            "action": "c2pa.edited",
            "digitalSourceType": label.digital_source_type,
            "softwareAgent": agent,
        }
    name, _, version = generator().partition("/")
    return {
        "claim_generator_info": [{"name": name, "version": version}],
        "title": f"{label.provenance['jobId']}.{EXTENSIONS[fmt]}",
        "format": CONTENT_TYPES[fmt],
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.opened",
                            "parameters": {"ingredientIds": [SOURCE_INGREDIENT]},
                        },
                        made,
                    ]
                },
            },
            {"label": PROVENANCE_ASSERTION, "data": label.provenance},
        ],
    }


def sign_output(
    data: bytes,
    fmt: OutputFormat,
    label: Label,
    source: Ingredient,
    credential: SigningCredential,
) -> bytes:
    """``data`` (an encoded, XMP-labelled output) with a C2PA manifest signed by
    ``credential`` embedded: the last change to the file."""
    import c2pa

    agent = {"name": label.provenance["model"], "version": label.provenance["revision"]}
    ingredient = {
        "title": source.title,
        "format": source.content_type,
        "relationship": "parentOf",
        "label": SOURCE_INGREDIENT,
    }
    signed = io.BytesIO()
    with (
        c2pa.Context(settings=c2pa.Settings.from_dict(BUILDER_SETTINGS)) as context,
        c2pa.Builder(manifest_definition(label, fmt, agent), context=context) as builder,
        credential.signer() as signer,
    ):
        builder.add_ingredient(json.dumps(ingredient), source.content_type, io.BytesIO(source.data))
        builder.sign(signer, CONTENT_TYPES[fmt], io.BytesIO(data), signed)
    return signed.getvalue()
