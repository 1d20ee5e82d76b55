"""Every output says inside the file what it is and how it was made: XMP read back by
exiftool (a reader we did not write) in png, jpeg and webp, and for a team with a
certificate a signed C2PA manifest that c2pa's own Reader verifies."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import c2pa
import pytest
from PIL import Image

from shared.errors import ConfigError
from shared.images import EXTENSIONS
from shared.models import Job
from shared.registry import BUILTINS
from shared.schemas import RenderParams
from shared.storage import LocalStorage, source_key
from tests.certificates import make_test_signer
from tests.factories import png_bytes
from worker import render
from worker.content_credentials import ContentCredentials, load_signing_credentials, resolve_teams
from worker.labels import COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA, TRAINED_ALGORITHMIC_MEDIA
from worker.pipelines import LoadedModel
from worker.render import RenderItem, encode_output

FORMATS = ("png", "jpeg", "webp")
PROMPT = "SECRET-LAUNCH <b>sneaker</b> & co"


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> LocalStorage:
    return LocalStorage(tmp_path_factory.mktemp("store"), "http://127.0.0.1", "s")


def model_of(alias: str, revision: str = "rev-1") -> LoadedModel:
    """What the label reads of a loaded model (its spec and revision); encoding never
    touches the pipeline, so none is loaded."""
    return LoadedModel(
        spec=BUILTINS[alias], pipe=None, device="cpu", revision=revision, load_seconds=0.0
    )


def item_of(storage: LocalStorage, fmt: str, batch_id: uuid.UUID | None = None) -> RenderItem:
    team_id = uuid.uuid4()
    data = png_bytes(64, 64, (200, 40, 40))
    key = source_key(team_id, "ab" * 32)
    storage.put(key, data, "image/png")
    params = RenderParams(
        strength=0.6, steps=4, guidance_scale=7.5, seed=42, width=64, height=64, output_format=fmt
    )
    job = Job(
        id=uuid.uuid4(),
        team_id=team_id,
        batch_id=batch_id,
        model="tiny",
        prompt=PROMPT,
        params=params.model_dump(),
        source_key=key,
    )
    return RenderItem(job=job, params=params, source=Image.open(io.BytesIO(data)).convert("RGB"))


def output(seed: int = 3) -> Image.Image:
    return Image.effect_noise((64, 64), 60 + seed).convert("RGB")


def exiftool(paths: list[Path]) -> list[dict[str, Any]]:
    """exiftool's reading of each file's XMP, one call for all (it starts in ~0.2 s)."""
    answer = subprocess.run(
        ["exiftool", "-j", "-G1", "-XMP:all", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(answer.stdout)


def text(value: Any) -> str:
    """exiftool's JSON types what looks like a number or boolean; the file holds text."""
    return value if isinstance(value, str) else json.dumps(value)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_every_format_carries_the_digital_source_type_and_provenance(storage, tmp_path):
    """img2img says trainedAlgorithmicMedia, inpaint (kept product pixels) the composite,
    echo (the source resized) claims nothing; the provenance is there for all three."""
    batch_id = uuid.uuid4()
    expected_type = {
        "tiny": TRAINED_ALGORITHMIC_MEDIA,
        "tiny-controlnet": TRAINED_ALGORITHMIC_MEDIA,
        "tiny-inpaint": COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
        "echo": None,
    }
    files, cases = [], []
    for alias in expected_type:
        for fmt in FORMATS:
            item = item_of(storage, fmt, batch_id)
            data = encode_output(model_of(alias), storage, item, output())
            assert PROMPT.encode() not in data and b"SECRET-LAUNCH" not in data
            assert Image.open(io.BytesIO(data)).format == {"png": "PNG"}.get(fmt, fmt.upper())
            files.append(write(tmp_path, f"{alias}.{EXTENSIONS[fmt]}", data))
            cases.append((alias, item))
    for (alias, item), read in zip(cases, exiftool(files), strict=True):
        where = read["SourceFile"]
        assert read.get("XMP-iptcExt:DigitalSourceType") == expected_type[alias], where
        assert read["XMP-xmp:CreatorTool"].startswith("imgfarm/"), where
        assert {
            k.removeprefix("XMP-imgfarm:"): text(v)
            for k, v in read.items()
            if k.startswith("XMP-imgfarm:")
        } == {
            "Model": alias,
            "Revision": "rev-1",
            "Kind": BUILTINS[alias].kind,
            "License": "imgfarm-builtin",
            "CommercialUse": "true",
            "Seed": "42",
            "Steps": "4",
            "Strength": "0.6",
            "GuidanceScale": "7.5",
            "JobId": str(item.job.id),
            "BatchId": str(batch_id),
        }, where


def test_label_text_is_escaped_and_a_single_job_has_no_batch_id(storage, tmp_path):
    """A value with XML's special characters comes back as it was (no markup injected)."""
    revision = 'main"/><evil x="1">&amp;<'
    item = item_of(storage, "png")
    data = encode_output(model_of("tiny", revision), storage, item, output())
    (read,) = exiftool([write(tmp_path, "odd.png", data)])
    assert read["XMP-imgfarm:Revision"] == revision
    assert "XMP-imgfarm:BatchId" not in read and "XMP-imgfarm:Evil" not in read


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    pems = make_test_signer()
    config = pems.write(tmp_path_factory.mktemp("c2pa"), "acme")
    return pems, load_signing_credentials(config)["acme"]


def read_manifest(data: bytes, fmt: str, context: c2pa.Context | None = None) -> dict[str, Any]:
    with c2pa.Reader(f"image/{fmt}", io.BytesIO(data), context=context) as reader:
        return json.loads(reader.json())


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_team_with_a_certificate_gets_a_valid_manifest_naming_the_source(
    storage, tmp_path, signer, fmt
):
    pems, credential = signer
    item = item_of(storage, fmt)
    other = item_of(storage, fmt)
    credentials = ContentCredentials({item.job.team_id: credential})
    model = model_of("tiny-inpaint")
    signed = encode_output(model, storage, item, output(), credentials=credentials)
    report = read_manifest(signed, fmt)
    assert report["validation_state"] == "Valid", report.get("validation_results")
    manifest = report["manifests"][report["active_manifest"]]
    assert manifest["claim_generator_info"][0]["name"] == "imgfarm"
    (ingredient,) = manifest["ingredients"]
    assert (ingredient["title"], ingredient["relationship"]) == ("ab" * 32, "parentOf")
    assert ingredient["format"] == "image/png"
    (actions,) = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    opened, edited = actions["data"]["actions"]
    assert opened["action"] == "c2pa.opened"
    assert edited["action"] == "c2pa.edited"
    assert edited["digitalSourceType"] == COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    assert edited["softwareAgent"] == {"name": "tiny-inpaint", "version": "rev-1"}
    # Signed last: the XMP label is still in the file, under the signature.
    (read,) = exiftool([write(tmp_path, f"signed.{EXTENSIONS[fmt]}", signed)])
    assert read["XMP-iptcExt:DigitalSourceType"] == COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    assert read["XMP-imgfarm:JobId"] == str(item.job.id)
    # With the test CA as a trust anchor the signer is trusted, not merely valid.
    settings = c2pa.Settings.from_dict(
        {"verify": {"verify_trust": True}, "trust": {"trust_anchors": pems.ca.decode()}}
    )
    with c2pa.Context(settings=settings) as context:
        assert read_manifest(signed, fmt, context)["validation_state"] == "Trusted"
    # Another team's output of the same worker carries the XMP label only.
    plain = encode_output(model, storage, other, output(), credentials=credentials)
    with pytest.raises(c2pa.C2paError):
        read_manifest(plain, fmt)


def test_a_signed_echo_output_says_resized_not_ai_made(storage, signer):
    """echo returns the source resized: its manifest says so, with no digital source type."""
    _, credential = signer
    item = item_of(storage, "jpeg")
    credentials = ContentCredentials({item.job.team_id: credential})
    signed = encode_output(model_of("echo"), storage, item, output(), credentials=credentials)
    report = read_manifest(signed, "jpeg")
    assert report["validation_state"] == "Valid", report.get("validation_results")
    manifest = report["manifests"][report["active_manifest"]]
    (actions,) = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    opened, resized = actions["data"]["actions"]
    assert (opened["action"], resized["action"]) == ("c2pa.opened", "c2pa.resized")
    assert "digitalSourceType" not in resized


def test_signers_file_is_checked_at_boot(tmp_path, signer, session_factory):
    """An unreadable key or an unknown key stops the worker at boot; a name no team has is
    skipped (resolved by name to the team's id)."""
    pems, credential = signer
    (tmp_path / "bad.toml").write_text('[teams.x]\ncert_chain = "nope.pem"\nprivate_key = "k"\n')
    with pytest.raises(ConfigError, match="cert_chain"):
        load_signing_credentials(tmp_path / "bad.toml")
    (tmp_path / "odd.toml").write_text('[teams.x]\ncert = "c.pem"\n')
    with pytest.raises(ConfigError, match="unknown keys"):
        load_signing_credentials(tmp_path / "odd.toml")
    (tmp_path / "k.pem").write_bytes(b"not a key")
    (tmp_path / "c.pem").write_bytes(pems.chain)
    (tmp_path / "junk.toml").write_text('[teams.x]\ncert_chain = "c.pem"\nprivate_key = "k.pem"\n')
    with pytest.raises(ConfigError, match="unusable"):
        load_signing_credentials(tmp_path / "junk.toml")
    with session_factory() as session:
        assert resolve_teams(session, {f"nobody-{uuid.uuid4()}": credential}).by_team == {}


class Slot:
    """A stand-in for the worker's CPU semaphore that says when it is held."""

    def __init__(self) -> None:
        self.held = False
        self.times = 0

    def __enter__(self) -> None:
        self.held, self.times = True, self.times + 1

    def __exit__(self, *exc: object) -> None:
        self.held = False


def test_outputs_are_encoded_holding_a_cpu_slot_and_stored_without_it(storage, monkeypatch):
    """The io pool's threads take a CPU slot to encode and score (worker/context.py) and
    give it back before uploading, so a slow store never keeps a core's slot idle."""
    slot, puts, encodes = Slot(), [], []
    item = item_of(storage, "png")
    item = RenderItem(
        item.job, item.params.model_copy(update={"presets": ["shopify-square"]}), item.source
    )
    monkeypatch.setattr(storage, "put", lambda key, *a, **k: puts.append((key, slot.held)))
    real_encode = render.encode_image
    monkeypatch.setattr(
        render, "encode_image", lambda *a, **k: encodes.append(slot.held) or real_encode(*a, **k)
    )
    result = render.store_output(
        model_of("tiny"),
        storage,
        item,
        output(),
        worker="w",
        batch_size=1,
        render_seconds=0.1,
        cpu=slot,
    )
    assert result.fidelity is not None
    assert [held for _, held in puts] == [False, False]  # the render and its preset
    assert encodes == [True]  # the main output (the preset encodes through its own module)
    assert slot.times == 2 and not slot.held
