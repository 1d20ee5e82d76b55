"""One table of hostile inputs, sent through each entry point that takes source images and
free text: ``POST /v1/jobs``, ``POST /v1/batches`` and ``POST /v1/uploads`` (multipart).

Each case says where its hostile part goes in each entry point's request, or why it does not
apply there. For every (case, entry point): a 4xx (never a 5xx), the error body names the
field as that entry point spells it (``image`` / ``images[0].image`` / ``files[0]``), and
nothing is written: no new object under ``sources/`` in the bucket, no new job, batch or
upload row.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.models import Batch, Job, Upload
from shared.storage import SOURCES_PREFIX
from tests.factories import data_url, png_bytes

ENTRY_POINTS = ("jobs", "batches", "uploads")
MAX_PIXELS = 4096 * 4096  # Settings.max_image_pixels, the session's default
GOOD_PNG = png_bytes(64, 64)


# --- hostile bytes, built by hand ----------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_bomb_png(width: int, height: int) -> bytes:
    """A few dozen bytes whose IHDR claims ``width`` x ``height`` RGB pixels (no real data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def sliver_png(width: int, height: int) -> bytes:
    """A real, decodable, tiny-on-disk 1-bit PNG of an absurd aspect ratio."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One hostile input. Only the parts it sets are hostile; the rest of each request is a
    valid one. ``not_for`` says, per entry point, why the case does not apply there."""

    id: str
    image: bytes | None = None  # source bytes: a data URL in JSON, a file in multipart
    image_ref: str | None = None  # a raw ``image`` reference (JSON bodies only)
    prompt: str | None = None
    metadata: dict[str, Any] | None = None
    skus: tuple[str, ...] | None = None  # batches: the skus of that many copies of one image
    pairing: Any = None  # batches: their pairing, over ``prompts`` prompts
    prompts: int = 1
    named: str = ""  # the field the error names, when the case says it outright
    bad_sku: int = 0  # which sku the error names
    filename: str | None = None  # uploads
    extra: dict[str, Any] | None = None  # top-level JSON fields
    knobs: dict[str, Any] | None = None  # render knobs (e.g. preset): a job's and a batch's
    mask: str | None = None  # a job's mask, a batch's images[0].mask
    names_mask: bool = False  # the error names the mask (mask, images[0].mask)
    status: int = 422
    # The field path inside the hostile part, e.g. "note" for metadata {"note": ...}.
    subfield: str = ""
    not_for: dict[str, str] = field(default_factory=dict)


NO_METADATA = "uploads take files only: no metadata"
NO_PROMPT = "uploads take files only: no prompt"
NO_NAMES = "only a batch names its images (sku)"
NO_REFS = "uploads take file bytes, not an image reference"
NO_FILENAME = "JSON bodies carry no file name"
NO_PAIRING = "only a batch pairs images with prompts"
JSON_ONLY = "multipart has no JSON body"
NO_KNOBS = "uploads take files only: no render knobs"

CASES = [
    Hostile(
        "lone-surrogate-metadata-value",
        metadata={"note": "cut emoji \ud83d"},
        subfield="note",
        not_for={"uploads": NO_METADATA},
    ),
    Hostile(
        "lone-surrogate-metadata-key",
        metadata={"tags": [{"ok": 1, "\udc00x": 2}]},
        subfield="tags[0].\\udc00x",
        not_for={"uploads": NO_METADATA},
    ),
    Hostile(
        "nul-in-metadata-key",
        metadata={"a\x00b": "c"},
        subfield="a\\x00b",
        not_for={"uploads": NO_METADATA},
    ),
    Hostile(
        "lone-surrogate-unknown-top-level-key",
        extra={"\ud83d": 1},
        not_for={"uploads": JSON_ONLY},
    ),
    Hostile("nul-in-prompt", prompt="a red\x00 shoe", not_for={"uploads": NO_PROMPT}),
    Hostile("lone-surrogate-in-prompt", prompt="a red \ud83d", not_for={"uploads": NO_PROMPT}),
    Hostile(
        "skus-differ-only-by-case",
        skus=("SKU-A", "sku-a"),
        bad_sku=1,
        not_for={"jobs": NO_NAMES, "uploads": NO_NAMES},
    ),
    Hostile(
        "skus-differ-only-by-normalisation",
        skus=("caf\u00e9", "cafe\u0301"),
        bad_sku=1,
        not_for={"jobs": NO_NAMES, "uploads": NO_NAMES},
    ),
    *(
        Hostile(
            f"non-portable-sku-{i}", skus=(sku,), not_for={"jobs": NO_NAMES, "uploads": NO_NAMES}
        )
        for i, sku in enumerate(
            ["CON", "lpt1.txt", "C:", "a<b", "trailing.", "   ", "\U0001f600" * 64]
        )
    ),
    *(
        Hostile(
            f"pairing-{name}",
            skus=("A", "B"),
            pairing=pairing,
            prompts=prompts,
            named=named,
            not_for={"jobs": NO_PAIRING, "uploads": NO_PAIRING},
        )
        for name, pairing, prompts, named in [
            ("zip-of-2-images-and-1-prompt", "zip", 1, "pairing"),
            ("unknown-mode", "diagonal", 1, "pairing"),
            ("negative-index", [{"image": -1, "prompt": 0}], 1, "pairing[0].image"),
            (
                "image-out-of-range",
                [{"image": 0, "prompt": 0}, {"image": 2, "prompt": 0}],
                1,
                "pairing[1].image",
            ),
            (
                "prompt-out-of-range",
                [{"image": 0, "prompt": 0}, {"image": 1, "prompt": 1}],
                1,
                "pairing[1].prompt",
            ),
            (
                "pair-twice",
                [{"image": 0, "prompt": 0}, {"image": 1, "prompt": 0}, {"image": 0, "prompt": 0}],
                1,
                "pairing[2]",
            ),
            ("image-no-pair-uses", [{"image": 0, "prompt": 0}], 1, "images[1]"),
            (
                "prompt-no-pair-uses",
                [{"image": 0, "prompt": 0}, {"image": 1, "prompt": 0}],
                2,
                "prompts[1]",
            ),
        ]
    ),
    *(
        Hostile(
            f"preset-{name}",
            knobs={"preset": preset},
            subfield=named,
            not_for={"uploads": NO_KNOBS},
        )
        for name, preset, named in [
            ("unknown", "ebay-main", "preset"),
            ("unknown-second-in-list", ["amazon-lifestyle", "ebay-main"], "preset[1]"),
            ("more-than-8", ["web-hero"] * 9, "preset"),
            ("not-a-name", [{"name": "web-hero"}], "preset[0]"),
            # The product alone on white, from an opaque source on an img2img-like model.
            ("amazon-main-without-a-cutout", "amazon-main", "preset"),
        ]
    ),
    # Brand style adapters (api/adapters.py): the team's own names, on a model taking LoRA.
    *(
        Hostile(
            f"adapters-{name}",
            knobs={"model": model, "adapters": adapters},
            subfield=named,
            not_for={"uploads": NO_KNOBS},
        )
        for name, model, adapters, named in [
            ("unregistered-name", "tiny", [{"name": "acme-summer"}], "adapters[0].name"),
            ("on-a-model-without-lora", "echo", [{"name": "acme-summer"}], "adapters"),
            ("named-twice", "tiny", [{"name": "x"}, {"name": "x"}], "adapters[1].name"),
            ("scale-past-2", "tiny", [{"name": "x", "scale": 2.5}], "adapters[0].scale"),
            ("more-than-4", "tiny", [{"name": f"x{i}"} for i in range(5)], "adapters"),
            ("not-a-list", "tiny", "acme-summer", "adapters"),
        ]
    ),
    # mask "auto" (worker/cutout.py): the model must inpaint, cutout goes with it, and
    # segmentation needs the model's network file.
    Hostile("mask-auto-on-img2img", mask="auto", names_mask=True, not_for={"uploads": NO_KNOBS}),
    *(
        Hostile(
            f"cutout-{name}",
            knobs={"model": "tiny-inpaint", "cutout": cutout},
            mask=mask,
            named="cutout",
            not_for={"uploads": NO_KNOBS},
        )
        for name, cutout, mask in [
            ("without-mask-auto", "studio", None),
            ("unknown-method", "grabcut", "auto"),
            ("segmentation-without-a-model-file", "segmentation", "auto"),
        ]
    ),
    # Enlargement after rendering (worker/upscale.py): 2 or 4, and at most 4096 px a side.
    *(
        Hostile(f"upscale-{name}", knobs=knobs, subfield="upscale", not_for={"uploads": NO_KNOBS})
        for name, knobs in [
            ("not-2-or-4", {"upscale": 3}),
            ("past-4096-px", {"upscale": 4, "width": 1032}),  # echo allows 1032; x4 is 4128
        ]
    ),
    Hostile("undecodable-image", image=b"\x89PNG\r\n\x1a\n" + b"\xde\xad" * 40),
    Hostile("empty-image", image=b""),
    Hostile("truncated-png", image=GOOD_PNG[: len(GOOD_PNG) // 2]),
    Hostile("png-header-claims-too-many-pixels", image=header_bomb_png(70_000, 70_000), status=413),
    Hostile("aspect-16777216x1", image=sliver_png(16_777_216, 1)),
    Hostile("aspect-65536x64", image=sliver_png(65_536, 64)),
    Hostile("text-file", image=b"name,sku\nshoe,SKU-1\n"),
    Hostile("pdf-magic", image=b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
    Hostile(
        "data-url-not-base64",
        image_ref="data:image/png;base64,%%%not base64%%%",
        not_for={"uploads": NO_REFS},
    ),
    Hostile(
        "data-url-without-base64-flag",
        image_ref="data:image/png,rawbytes",
        not_for={"uploads": NO_REFS},
    ),
    Hostile(
        "filename-over-255-chars",
        filename="a" * 252 + ".png",
        not_for={"jobs": NO_FILENAME, "batches": NO_FILENAME},
    ),
    Hostile(
        "filename-with-nul",
        filename="shoe\x00.png",
        not_for={"jobs": NO_FILENAME, "batches": NO_FILENAME},
    ),
]


# --- one request per entry point -------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    json: dict[str, Any] | None = None
    files: list[tuple[str, bytes]] | None = None  # (filename, bytes) of multipart "files"


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body written by hand: httpx would percent-encode a NUL in a
    filename, and a hostile client sends the raw byte."""
    boundary = "hostile-boundary-7f3a"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _image_ref(case: Hostile) -> str:
    if case.image_ref is not None:
        return case.image_ref
    return data_url(GOOD_PNG if case.image is None else case.image)


def _text_fields(case: Hostile) -> dict[str, Any]:
    fields = dict(case.extra or {})
    if case.metadata is not None:
        fields["metadata"] = case.metadata
    fields |= case.knobs or {}
    return fields


def job_request(case: Hostile) -> tuple[Request, str]:
    body = {"model": "echo", "prompt": case.prompt or "a shoe", "image": _image_ref(case)}
    body |= _text_fields(case)
    if case.mask is not None:
        body["mask"] = case.mask
    if case.names_mask:
        return Request("/v1/jobs", json=body), "mask"
    return Request("/v1/jobs", json=body), _json_field(case, image="image", prompt="prompt")


def _hostile_image(case: Hostile) -> bool:
    return case.image is not None or case.image_ref is not None


def batch_request(case: Hostile) -> tuple[Request, str]:
    if _hostile_image(case):
        # After a good image, so "nothing written" covers the good one too.
        images = [{"image": data_url(GOOD_PNG)}, {"image": _image_ref(case)}]
        return Request("/v1/batches", json=_batch_body(case, images)), "images[1].image"
    skus = case.skus or (None,)
    mask = {} if case.mask is None else {"mask": case.mask}
    images = [{"image": _image_ref(case), **({"sku": s} if s else {}), **mask} for s in skus]
    if case.names_mask:
        return Request("/v1/batches", json=_batch_body(case, images)), "images[0].mask"
    body = _batch_body(case, images)
    # Names are checked two ways, each one alone by the schema and their collisions by
    # the api: both spell the path images[1].sku.
    sku_field = f"images[{case.bad_sku}].sku"
    field = _json_field(case, image="images[0].image", prompt="prompts[0].prompt", sku=sku_field)
    return Request("/v1/batches", json=body), field


def _batch_body(case: Hostile, images: list[dict[str, str]]) -> dict[str, Any]:
    prompts = [case.prompt or "a shoe", *(f"scene {n}" for n in range(1, case.prompts))]
    body: dict[str, Any] = {"model": "echo", "images": images, "prompts": prompts}
    if case.pairing is not None:
        body["pairing"] = case.pairing
    return body | _text_fields(case)


def upload_request(case: Hostile) -> tuple[Request, str]:
    # The hostile file comes second, after a good one that must not be stored either.
    data = GOOD_PNG if case.image is None else case.image
    name = "shoe.png" if case.filename is None else case.filename
    return Request("/v1/uploads", files=[("good.png", GOOD_PNG), (name, data)]), "files[1]"


def _json_field(case: Hostile, *, image: str, prompt: str, sku: str = "") -> str:
    if case.named:
        return case.named
    if case.metadata is not None:
        return f"metadata.{case.subfield}"
    if case.extra is not None:
        return "body"  # a key that cannot be encoded cannot be named either
    if case.knobs is not None:
        return case.subfield
    if case.prompt is not None:
        return prompt
    if case.skus is not None:
        return sku
    return image


BUILDERS: dict[str, Callable[[Hostile], tuple[Request, str]]] = {
    "jobs": job_request,
    "batches": batch_request,
    "uploads": upload_request,
}


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for entry in ENTRY_POINTS:
            marks = []
            if entry in case.not_for:
                marks.append(pytest.mark.skip(reason=f"not applicable: {case.not_for[entry]}"))
            params.append(pytest.param(case, entry, id=f"{case.id}-{entry}", marks=marks))
    return params


# --- what was written -----------------------------------------------------------------------


def written(session_factory, s3_client, settings) -> tuple[int, int, int, int]:
    """(jobs, batches, uploads, source objects) in the whole database and bucket."""
    with session_factory() as s:
        rows = [s.scalar(select(func.count()).select_from(t)) for t in (Job, Batch, Upload)]
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    sources = f"{prefix}/{SOURCES_PREFIX}" if prefix else SOURCES_PREFIX
    objects = 0
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=sources):
        objects += page.get("KeyCount", 0)
    return (*rows, objects)


@pytest.mark.parametrize(("case", "entry"), _params())
def test_hostile_input_is_a_4xx_naming_the_field_and_writes_nothing(
    client, new_key, session_factory, s3_client, settings, case: Hostile, entry: str
) -> None:
    request, expected_field = BUILDERS[entry](case)
    headers = {"Authorization": f"Bearer {new_key(None)}"}
    before = written(session_factory, s3_client, settings)
    if request.json is not None:
        # json.dumps escapes lone surrogates as "\\ud83d", as a JavaScript client sends them
        # (httpx's own encoder would refuse to encode them).
        content = json.dumps(request.json).encode()
        headers["Content-Type"] = "application/json"
        response = client.post(request.path, content=content, headers=headers)
    else:
        assert request.files is not None
        content, headers["Content-Type"] = multipart(request.files)
        response = client.post(request.path, content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == case.status, response.text
    # The field, or a part of it ("files[0].filename" names files[0] too).
    fields = [e["field"] for e in response.json()["errors"]]
    assert any(f == expected_field or f.startswith(expected_field + ".") for f in fields), (
        expected_field,
        response.json(),
    )
    assert written(session_factory, s3_client, settings) == before, "something was written"
