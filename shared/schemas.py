"""Request and response bodies shared by the api, the worker and the CLI client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.events import EVENT_TYPES
from shared.images import OutputFormat, ResizeMode
from shared.names import NAME_RULE, name_problem
from shared.review import MAX_DECISIONS, MAX_NOTE_CHARS

MAX_METADATA_BYTES = 8 * 1024
MAX_SEED = 2**63 - 1
# Scheduling classes, most urgent first (dispatch/fair_share.py).
Priority = Literal["interactive", "standard", "bulk"]
# The product-photo workflow (issue 18). ``mask: "auto"``: the worker finds the product's
# keep mask itself (worker/cutout.py), by one of these methods.
MASK_AUTO = "auto"
CutoutMethod = Literal["studio", "segmentation"]
# Post-render enlargement factors (worker/upscale.py).
UpscaleFactor = Literal[2, 4]
MAX_PRESETS = 8
MAX_ADAPTERS = 4


class RequestBody(BaseModel):
    """A request body: unknown fields refused, and text that can be stored and sent back.

    Every string of every field, at any depth (``metadata`` keys and values included), is
    refused with its path (``metadata.note``) when it holds NUL (PostgreSQL text cannot) or
    a lone surrogate (what a client that cuts an emoji in half sends as ``"\\ud83d"``: it
    would be stored, then break every answer that includes it, as UTF-8 cannot encode it).
    Nested bodies (a batch's images and prompts) check their own fields the same way.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        bad: tuple[Path, str] | None
        if isinstance(value, str):  # most fields: no walk
            bad = None if (problem := _text_problem(value)) is None else ((), problem)
        else:
            bad = first_bad_text(value)
        if bad is not None:
            path, problem = bad
            error = PydanticCustomError("text", "{problem}", {"problem": problem})
            raise ValidationError.from_exception_data(
                cls.__name__, [InitErrorDetails(type=error, loc=path, input=None)]
            )
        return value


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL (\\x00) characters"
    if text.isascii():  # O(1) in CPython: the common case never copies the string
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain a lone surrogate (half of a UTF-16 pair, e.g. a cut emoji)"
    return None


def _escaped(key: str) -> str:
    # A bad key names its own path: escape it, or the error answer could not be encoded.
    return key.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


Path = tuple[str | int, ...]


def first_bad_text(value: Any) -> tuple[Path, str] | None:
    """The path (relative to ``value``) and problem of a string, or dict key, of ``value``
    that cannot be stored as text; None when all can. Nested models are skipped: they
    check themselves. Iterative, so deep JSON cannot exhaust the stack."""
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        pairs: Iterable[tuple[str | int, Any]]
        if isinstance(item, dict):
            for key in item:
                if isinstance(key, str) and (problem := _text_problem(key)):
                    return (*path, _escaped(key)), f"key {problem}"
            pairs = item.items()
        elif isinstance(item, list | tuple):
            pairs = enumerate(item)
        else:
            continue
        for step, child in pairs:
            if isinstance(child, str):
                if problem := _text_problem(child):
                    return (*path, step), problem
            elif isinstance(child, dict | list | tuple):
                stack.append(((*path, step), child))
    return None


class AdapterRef(RequestBody):
    """One brand style adapter (LoRA) a render applies, by its registered name."""

    name: str = Field(min_length=1, max_length=100, description="The adapter's name.")
    scale: float = Field(
        default=1.0, ge=-2, le=2, description="How strongly it applies (default 1)."
    )


class RenderKnobs(RequestBody):
    """What a job and a batch both take, declared once so the two routes cannot drift: the
    model and its optional render knobs (left out, the model decides), a negative prompt,
    metadata and a webhook URL. Both are checked by one function (api/submit.py)."""

    model: str = Field(
        min_length=1, max_length=100, description="A model alias (`GET /v1/models`)."
    )
    negative_prompt: str | None = Field(
        description=(
            "What to keep out of the render, up to 2,000 characters; in a batch, for the prompts "
            "that do not give their own."
        ),
        default=None,
        max_length=2000,
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="0 < s ≤ 1: how far from the source the render may go; omitted → the model's.",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        description="Denoising steps, at most the model's `max_steps`; omitted → the model's.",
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=50,
        description="Classifier-free guidance, 0 to 50; omitted → the model's.",
    )
    seed: int | None = Field(
        description=(
            "Same params + seed → identical pixels; omitted → drawn and recorded in the job. A "
            "batch derives each job's seed from it."
        ),
        default=None,
        ge=0,
        le=MAX_SEED,
    )
    width: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Output width in pixels: a multiple of 8 within the model's bounds (`GET /v1/models` →"
            " `limits`); omitted → the model's."
        ),
    )
    height: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Output height in pixels: a multiple of 8 within the model's bounds (`GET /v1/models` "
            "→ `limits`); omitted → the model's."
        ),
    )
    output_format: OutputFormat = Field(
        default="png", description="`png` (default), `jpeg` or `webp`."
    )
    resize_mode: ResizeMode = Field(
        description=(
            "How the source is brought to `width`×`height`: `crop` (default: scale to cover, "
            "center-crop), `fit` (stretch, aspect ratio not kept) or `pad` (scale to fit inside, "
            "pad with white; inpaint repaints the pad)."
        ),
        default="crop",
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Your JSON object (at most 8 KiB), returned with the job."
    )
    webhook_url: str | None = Field(
        description=(
            "Public http(s) URL that receives this job's events (for a batch: every job's, and "
            "batch.progress and batch.completed), signed with the team's webhook secret (`GET "
            "/v1/webhooks/secret`)."
        ),
        default=None,
        min_length=1,
        max_length=2048,
    )
    require_commercial_use: bool = Field(
        default=False,
        description=(
            "true: refuse (422 naming `model`) unless the model's licence allows commercial "
            "use (`GET /v1/models` → `commercial_use`)."
        ),
    )
    priority: Priority = Field(
        default="standard",
        description=(
            "`interactive`, `standard` (default) or `bulk`: the order of a team's own jobs "
            "for the GPUs; `interactive` also goes ahead of other teams' jobs, for at most 3 of "
            "every 4 hand-overs."
        ),
    )
    preset: list[str] = Field(
        default_factory=list,
        max_length=MAX_PRESETS,
        description=(
            "Marketplace presets (`GET /v1/presets`), one name or a list: each gives one more "
            "output brought to that channel's rules (size, background, format), e.g. "
            "`amazon-main`, `instagram-portrait`."
        ),
    )
    upscale: UpscaleFactor | None = Field(
        default=None,
        description="2 or 4: the output enlarged that many times after rendering.",
    )
    cutout: CutoutMethod | None = Field(
        default=None,
        description=(
            'With `mask: "auto"`: how the product is found, `studio` (a product on a plain '
            "light background) or `segmentation` (a segmentation network); omitted → the "
            "model's."
        ),
    )
    adapters: list[AdapterRef] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description="Brand style adapters (LoRA) registered by the team (`GET /v1/adapters`).",
    )

    @field_validator("preset", mode="before")
    @classmethod
    def _preset_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
        return value


IMAGE_DESCRIPTION = (
    "Data URL, public http(s) URL (private addresses refused), or upload id. PNG, JPEG (MPO "
    "too), WebP, AVIF, TIFF, GIF or BMP; read as it is seen: EXIF orientation applied, 16-bit "
    "scaled to 8, an embedded ICC profile (Adobe RGB, Display P3, CMYK) converted to sRGB. "
    "Outputs are sRGB and say so (PNG `sRGB` chunk, ICC profile in JPEG/WebP)."
)
MASK_DESCRIPTION = (
    "Inpaint models only: white repaints, black keeps (bit-identical). Same forms as image "
    'and the source\'s size, or `"auto"`: the worker cuts the product out itself (`cutout`). '
    "Omitted: a source PNG's transparent pixels are repainted and its fully opaque ones kept."
)


class JobCreate(RenderKnobs):
    """``POST /v1/jobs``. Optional knobs left out take the model's defaults."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "tiny",
                    "prompt": "a red sneaker on a snowy porch",
                    "image": "https://example.com/shoe.png",
                    "strength": 0.6,
                    "seed": 42,
                    "output_format": "webp",
                    "metadata": {"sku": "SHOE-1"},
                }
            ]
        },
    )

    prompt: str = Field(
        min_length=1, max_length=2000, description="What to render, up to 2,000 characters."
    )
    image: str = Field(
        description=IMAGE_DESCRIPTION,
        min_length=1,
    )
    mask: str | None = Field(default=None, min_length=1, description=MASK_DESCRIPTION)


class AdapterUse(BaseModel):
    """An adapter as a job renders it: pinned to the weights' digest when it was accepted,
    so re-registering a name never changes what a queued job renders."""

    name: str = Field(description="The adapter's name.")
    scale: float = Field(description="How strongly it applied.")
    sha256: str = Field(description="SHA-256 of its safetensors file.")


class RenderParams(BaseModel):
    """Parameters after defaults are filled in: exactly what the worker renders."""

    strength: float = Field(description="How far from the source the render went (0 < s ≤ 1).")
    steps: int = Field(description="Denoising steps.")
    guidance_scale: float = Field(description="Classifier-free guidance.")
    seed: int = Field(description="The seed used: the same params and seed give identical pixels.")
    width: int = Field(description="Output width in pixels.")
    height: int = Field(description="Output height in pixels.")
    output_format: OutputFormat = Field(description="png, jpeg or webp.")
    # Default for jobs stored before resize modes existed (they were center-cropped).
    resize_mode: ResizeMode = Field(
        default="crop",
        description="How the source was brought to width x height: fit, crop or pad.",
    )
    # The product-photo workflow (issue 18); the defaults are what jobs stored before it mean.
    cutout: CutoutMethod | None = Field(
        default=None,
        description='How its keep mask was found (`mask: "auto"`); null: given or none.',
    )
    upscale: int | None = Field(default=None, description="Enlargement after rendering.")
    presets: list[str] = Field(
        default_factory=list, description="Marketplace presets: one more output each."
    )
    adapters: list[AdapterUse] = Field(
        default_factory=list, description="Brand style adapters (LoRA) it rendered with."
    )


WARNINGS_DESCRIPTION = (
    "Why the job may not move, for people (e.g. no worker online for its model since a "
    "time); empty when nothing is wrong. Only queued jobs get one."
)


class JobAccepted(BaseModel):
    id: uuid.UUID = Field(description="The job's id: follow it with GET /v1/jobs/{id}.")
    status: str = Field(description="queued: waiting for a worker of its model.")
    warnings: list[str] = Field(default_factory=list, description=WARNINGS_DESCRIPTION)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


class JobDurations(BaseModel):
    """How long the job took, from its timestamps; null until both ends are known."""

    queue_wait_seconds: float | None = Field(
        description="From creation to the start of its last attempt (retries included)."
    )
    render_seconds: float | None = Field(
        description="From the start of its last attempt to its end."
    )
    total_seconds: float | None = Field(
        description="From creation to its end (succeeded, failed or canceled)."
    )

    @classmethod
    def between(
        cls, created: datetime, started: datetime | None, finished: datetime | None
    ) -> JobDurations:
        return cls(
            queue_wait_seconds=_seconds(created, started),
            render_seconds=_seconds(started, finished),
            total_seconds=_seconds(created, finished),
        )


class OutputPublic(BaseModel):
    url: str = Field(
        description=(
            "Where to download it: a presigned S3 URL or a signed /v1/files URL; both expire."
        )
    )
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    content_type: str = Field(description="image/png, image/jpeg or image/webp.")
    preset: str | None = Field(
        default=None, description="The marketplace preset it was made for; null: the render."
    )


# The scores of worker/fidelity.py, as JSON answers, webhooks and the manifest name them.
FIDELITY_SCORES = ("structure", "ssim", "colour_drift", "kept_pixels_changed")


class FidelityPublic(BaseModel):
    """How faithful the output is to its source, scored by the worker when it rendered."""

    structure: float = Field(
        description="Edge agreement, 0..1: F1 of the canny edges of source and output, an "
        "edge matching one within 1 px (1: the same outlines). Thresholded: min_structure."
    )
    ssim: float = Field(
        description="Structural similarity of the luminances (scikit-image), up to 1 (identical)."
    )
    colour_drift: float = Field(
        description="Mean CIEDE2000 ΔE against the source over the product region (an inpaint "
        "job's kept pixels, else a cut-out source's opaque pixels, else the whole image): "
        "about 1 is just visible, 2-3 a print proof's tolerance. Thresholded: "
        "max_colour_drift."
    )
    kept_pixels_changed: int | None = Field(
        description="Inpaint: kept pixels that differ from the source at all (0 in png; jpeg "
        "and webp are lossy); null for other kinds."
    )


class AttemptPublic(BaseModel):
    """An earlier attempt of a job, replaced by a rerender (``POST /v1/batches/{id}/rerender``)."""

    round: int = Field(description="0 for the first render, then 1, 2, ... for each rerender.")
    seed: int = Field(description="The seed it rendered with.")
    outputs: list[OutputPublic] = Field(
        description="What it rendered: its objects stay in storage (URLs that expire)."
    )
    fidelity: dict[str, Any] | None = Field(description="Its scores against the source.")
    review: str | None = Field(description="Its review state when it was replaced (rejected).")
    review_note: str | None = Field(description="The reviewer's note on it.")
    reviewed_by: uuid.UUID | None = Field(description="The id of the API key that decided.")
    reviewed_at: datetime | None = Field(description="When it was decided.")
    finished_at: datetime | None = Field(description="When it succeeded.")


class ProvenancePublic(BaseModel):
    """How a job's output was made and what the file says about it (from the worker)."""

    model: str | None = Field(default=None, description="The model alias it rendered with.")
    revision: str | None = Field(default=None, description="The model's weights revision.")
    kind: str | None = Field(default=None, description="The model's kind (img2img, echo, ...).")
    license: str | None = Field(default=None, description="The model's licence.")
    commercial_use: bool | None = Field(
        default=None, description="Whether that licence allows commercial use."
    )
    worker: str | None = Field(default=None, description="The worker that rendered it.")
    device: str | None = Field(default=None, description="The device it rendered on.")
    digital_source_type: str | None = Field(
        default=None,
        description="The IPTC digital source type written into the output's XMP (null: no "
        "claim, as for echo, which only resizes the source).",
    )
    c2pa_signed: bool | None = Field(
        default=None,
        description="Whether the output carries a signed C2PA manifest (the team has a "
        "certificate on the worker); null for outputs stored before this was recorded.",
    )
    upscaler: str | None = Field(
        default=None,
        description="What enlarged it (`upscale`): the upscale model's alias, or `lanczos` "
        "(a worker with no upscale weights); null: not enlarged.",
    )


class JobPublic(BaseModel):
    id: uuid.UUID = Field(description="The job's id.")
    status: str = Field(description="queued, running, then succeeded, failed or canceled.")
    model: str = Field(description="The model alias it renders with.")
    prompt: str = Field(description="What it renders.")
    negative_prompt: str | None = Field(description="What it keeps out of the render.")
    params: RenderParams = Field(
        description="The parameters after the model's defaults: exactly what is rendered."
    )
    metadata: dict[str, Any] | None = Field(description="Your JSON, as sent.")
    attempts: int = Field(
        description="Render attempts so far (a lost worker or transient error retries)."
    )
    error: str | None = Field(
        description="Why it failed (or why its last attempt did), for people."
    )
    worker: str | None = Field(description="The worker that ran its last attempt.")
    created_at: datetime = Field(description="When it was accepted.")
    started_at: datetime | None = Field(description="When its last attempt started.")
    finished_at: datetime | None = Field(description="When it succeeded, failed or was canceled.")
    durations: JobDurations = Field(
        description="Queue wait, render and total seconds, from the timestamps."
    )
    outputs: list[OutputPublic] = Field(
        description="The rendered images (empty until it succeeds)."
    )
    fidelity: FidelityPublic | None = Field(
        default=None, description="Its output's scores against its source (null until it succeeds)."
    )
    review: str | None = Field(
        default=None,
        description="passed (every fidelity threshold met) or needs_review when it succeeded, "
        "then approved or rejected by a person; null until it succeeds.",
    )
    warnings: list[str] = Field(default_factory=list, description=WARNINGS_DESCRIPTION)
    review_note: str | None = Field(default=None, description="The reviewer's note, as sent.")
    reviewed_by: uuid.UUID | None = Field(
        default=None, description="The id of the API key that approved or rejected it."
    )
    reviewed_at: datetime | None = Field(default=None, description="When it was decided.")
    provenance: ProvenancePublic | None = Field(
        default=None, description="How its output was made and labelled (null until it succeeds)."
    )
    history: list[AttemptPublic] = Field(
        default_factory=list,
        description="Earlier attempts a rerender replaced, oldest first (empty: none).",
    )
    mask_url: str | None = Field(
        default=None,
        description=(
            "Where to download its mask (white = repaint, black = keep): the one given, or "
            'for `mask: "auto"` the one the worker found, once rendered; null: none.'
        ),
    )


class JobsPublic(BaseModel):
    jobs: list[JobPublic] = Field(description="One page, newest first.")
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null on the last."
    )


class UploadPublic(BaseModel):
    id: uuid.UUID = Field(description="Name it as a job's or batch's image (or mask).")
    filename: str | None = Field(description="The name it was sent with.")
    content_type: str = Field(description="The image format found (not the one claimed).")
    width: int = Field(description="Width in pixels, upright (EXIF orientation applied).")
    height: int = Field(description="Height in pixels, upright (EXIF orientation applied).")
    size_bytes: int = Field(description="Stored size in bytes.")


class UploadsPublic(BaseModel):
    uploads: list[UploadPublic] = Field(description="One per file, in the order sent.")


ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ADAPTER_NAME_DESCRIPTION = (
    "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (it goes in URLs)."
)


class AdapterCreate(RequestBody):
    """``POST /v1/adapters`` as JSON: a safetensors file the api fetches (or send it as
    multipart, ``name`` and ``file``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "acme-summer", "url": "https://example.com/acme-summer.safetensors"}
            ]
        },
    )

    name: str = Field(pattern=ADAPTER_NAME_PATTERN, description=ADAPTER_NAME_DESCRIPTION)
    url: str = Field(
        min_length=1, max_length=2048, description="A public http(s) URL (private refused)."
    )


class AdapterPublic(BaseModel):
    name: str = Field(description="What jobs name it by (`adapters: [{name, scale}]`).")
    sha256: str = Field(description="SHA-256 of its safetensors file: what a job pins.")
    size_bytes: int = Field(description="Size of the file in bytes.")
    created_at: datetime = Field(description="When this name was last registered.")


class AdaptersPublic(BaseModel):
    adapters: list[AdapterPublic] = Field(description="The team's adapters, by name.")


class ModelPublic(BaseModel):
    alias: str = Field(description="The name jobs give as model.")
    kind: str = Field(
        description="img2img, inpaint, controlnet-canny or echo (no weights; returns the source)."
    )
    description: str = Field(description="What the model is for.")
    license: str = Field(
        description=(
            "The weights' licence as the model card names it (e.g. creativeml-openrail-m); "
            "unknown when the operator did not say."
        )
    )
    commercial_use: bool = Field(
        description=(
            "Whether the operator may sell what it renders under that licence; jobs and "
            "batches with require_commercial_use are refused otherwise."
        )
    )
    defaults: dict[str, Any] = Field(
        description=(
            "What knobs left out of a job take: steps, strength, guidance_scale, width, height, "
            "scheduler."
        )
    )
    limits: dict[str, Any] = Field(
        description=(
            "What a job may ask: min_size, max_size, size_multiple, max_steps, max_batch, "
            "resize_modes, takes_mask."
        )
    )
    workers: list[str] = Field(
        default_factory=list, description="Names of the workers online now that pin this model."
    )
    last_seen_at: datetime | None = Field(
        default=None,
        description="The latest heartbeat of any worker of this model (null: none ever started).",
    )
    warning: str | None = Field(
        default=None,
        description="Set while no worker is online for it: its jobs stay queued, and since when.",
    )


class ModelsPublic(BaseModel):
    models: list[ModelPublic] = Field(description="Every model, by alias.")


# --- Batches -------------------------------------------------------------------------------

MAX_BATCH_JOBS = 10_000


def _portable(value: str) -> str:
    if problem := name_problem(value):
        raise ValueError(f"{value!r} cannot name a file or folder on every system: it {problem}")
    return value


# Image and prompt names become folders in the archive and in the CLI's download tree.
Name = Annotated[
    str,
    Field(min_length=1, max_length=100, description=NAME_RULE),
    AfterValidator(_portable),
]


class BatchImage(RequestBody):
    """One source image of a batch; ``sku`` names its folder (default ``image-N``).

    A mask belongs to its image (it must have the image's size and outline what to repaint
    in it), so there is no batch-wide mask: give the same upload id as each image's mask to
    share one; a reference repeated in a batch is fetched and stored once.
    """

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        description=IMAGE_DESCRIPTION,
        min_length=1,
    )
    sku: Name | None = Field(
        default=None, description="Names the image's folder in the archive (default image-N)."
    )
    mask: str | None = Field(default=None, min_length=1, description=MASK_DESCRIPTION)


class BatchPrompt(RequestBody):
    """One prompt of a batch; ``name`` names its folder (default: a slug of the prompt)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1, max_length=2000, description="What to render, up to 2,000 characters."
    )
    name: Name | None = Field(
        default=None,
        description="Names the prompt's folder in the archive (default: a slug of the prompt).",
    )
    negative_prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="This prompt's own negative prompt (default: the batch's).",
    )


# The key of a job's params that carries its batch's ``review`` thresholds to the worker
# (worker/render.py ``assess``): copied at creation, so the worker needs no extra query.
REVIEW_THRESHOLDS = "review_thresholds"


class ReviewThresholds(RequestBody):
    """A batch's override of its model's fidelity thresholds (README "Fidelity and review")."""

    min_structure: float | None = Field(
        default=None, ge=0, le=1, description="Lowest structure score that passes (0..1)."
    )
    max_colour_drift: float | None = Field(
        default=None, ge=0, le=100, description="Highest colour drift (mean ΔE2000) that passes."
    )


Pairing = Literal["cross", "zip"]


class PairRef(RequestBody):
    """One (image, prompt) job of an explicitly paired batch, by their indexes."""

    image: int = Field(ge=0, description="Index into images.")
    prompt: int = Field(ge=0, description="Index into prompts.")


class BatchCreate(RenderKnobs):
    """``POST /v1/batches``: every image x every prompt (or the pairs ``pairing`` names) x
    ``variants`` seeds, one job each.

    Images and prompts may be plain strings or objects naming them; an image object may
    carry its own ``mask`` (inpaint models). The knobs (RenderKnobs) are the batch's, for
    every job, checked as a job's are; left out, they take the model's defaults. Each job's
    seed is derived from ``seed`` (drawn if omitted).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "tiny",
                    "images": [{"image": "https://example.com/shoe.png", "sku": "SHOE-1"}],
                    "prompts": [{"prompt": "on a snowy porch", "name": "snow"}, "on a beach"],
                    "variants": 4,
                    "seed": 7,
                }
            ]
        },
    )

    images: list[BatchImage] = Field(
        min_length=1,
        max_length=MAX_BATCH_JOBS,
        description="Source images: strings (as a job's image) or objects with sku and mask.",
    )
    prompts: list[BatchPrompt] = Field(
        min_length=1,
        max_length=MAX_BATCH_JOBS,
        description="Prompts: strings or objects with name and negative_prompt.",
    )
    variants: int = Field(
        default=1,
        ge=1,
        le=MAX_BATCH_JOBS,
        description="Seeds per image x prompt (each job's seed is derived from seed).",
    )
    review: ReviewThresholds | None = Field(
        default=None,
        description="This batch's own fidelity thresholds for passing an output without a "
        "person; each one left out is the model's (GET /v1/models).",
    )
    pairing: Pairing | list[PairRef] = Field(
        default="cross",
        description=(
            "`cross` (default): every image x every prompt; `zip`: image i with prompt i "
            "(as many of each); or a list of `{image, prompt}` index pairs. x `variants` seeds."
        ),
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description=(
            "When you need it done: ISO 8601 with a timezone, in the future. Once its ETA "
            "reaches the deadline its jobs go one priority class up; `GET /v1/batches/{id}` "
            "says `on_track`."
        ),
    )

    @field_validator("deadline")
    @classmethod
    def _deadline_ahead(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value

    @field_validator("images", mode="before")
    @classmethod
    def _image_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"image": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"prompt": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def job_count(self) -> int:
        """Jobs it makes: its pairs x variants (api/pairing.py says which pairs)."""
        if self.pairing == "cross":
            pairs = len(self.images) * len(self.prompts)
        elif self.pairing == "zip":  # equal counts, or api/pairing.py refuses it
            pairs = min(len(self.images), len(self.prompts))
        else:
            pairs = len(self.pairing)
        return pairs * self.variants


class BatchAccepted(BaseModel):
    id: uuid.UUID = Field(description="The batch's id: follow it with GET /v1/batches/{id}.")
    job_count: int = Field(
        description="Jobs created: images x prompts x variants (cross), or pairs x variants."
    )
    seed: int = Field(
        description="The batch seed every job's seed derives from (drawn if omitted)."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Why its jobs may not move, for people (e.g. no worker online for the "
        "model since a time); empty when nothing is wrong.",
    )


class BatchEstimate(BaseModel):
    """``POST /v1/batches?dry_run=true``: what the batch would cost; nothing was created."""

    job_count: int = Field(
        description="Jobs it would create: images x prompts x variants (cross), or pairs x "
        "variants."
    )
    estimated_gpu_seconds: float | None = Field(
        description="Its jobs x the model's observed GPU seconds per job (null: none rendered "
        "in the last 10 minutes)."
    )
    eta_seconds: float | None = Field(
        description="Seconds until its last job would finish: the model's queue and these "
        "jobs at its observed throughput (null: none rendered in the last 10 minutes)."
    )


class BatchCounts(BaseModel):
    """Jobs of a batch by status; they add up to ``job_count``."""

    queued: int = Field(default=0, description="Jobs queued.")
    running: int = Field(default=0, description="Jobs running.")
    succeeded: int = Field(default=0, description="Jobs succeeded.")
    failed: int = Field(default=0, description="Jobs failed.")
    canceled: int = Field(default=0, description="Jobs canceled.")


class ReviewCounts(BaseModel):
    """Outputs of a batch by review state (jobs not rendered yet are not counted)."""

    passed: int = Field(default=0, description="Outputs that met every fidelity threshold.")
    needs_review: int = Field(default=0, description="Outputs a person should look at.")
    approved: int = Field(default=0, description="Outputs a person approved.")
    rejected: int = Field(default=0, description="Outputs a person rejected.")


class BatchPublic(BaseModel):
    id: uuid.UUID = Field(description="The batch's id.")
    status: str = Field(
        description="queued (nothing started), running, then succeeded (all jobs did), "
        "failed (some failed) or canceled (some canceled, none failed)."
    )
    model: str = Field(description="The model alias of every job.")
    job_count: int = Field(description="Jobs in the batch.")
    counts: BatchCounts = Field(description="Jobs by status.")
    review_counts: ReviewCounts = Field(
        default_factory=ReviewCounts, description="Outputs by review state."
    )
    progress: float = Field(description="Finished jobs (any final state) / job_count.")
    seed: int = Field(description="The batch seed.")
    params: dict[str, Any] = Field(description="The knobs every job shares, as sent.")
    image_count: int = Field(description="Source images.")
    prompt_count: int = Field(description="Prompts.")
    variants: int = Field(description="Seeds per image x prompt.")
    pairing: str = Field(
        default="cross",
        description="How its images met its prompts: cross, zip or pairs (an explicit list; "
        "its jobs' sku and prompt_name say which).",
    )
    metadata: dict[str, Any] | None = Field(description="Your JSON, as sent.")
    created_at: datetime = Field(description="When it was accepted.")
    started_at: datetime | None = Field(description="When its first job started.")
    finished_at: datetime | None = Field(description="When its last job finished.")
    canceled_at: datetime | None = Field(description="When it was canceled.")
    jobs_per_second: float | None = Field(
        description="Observed throughput: finished renders per second since the first started."
    )
    eta_seconds: float | None = Field(description="Queued and running jobs / jobs_per_second.")
    priority: str = Field(default="standard", description="Its jobs' priority, as sent.")
    deadline: datetime | None = Field(default=None, description="Its deadline, as sent.")
    eta: datetime | None = Field(
        default=None,
        description="When its last job should finish: the jobs of its model queued ahead of "
        "it and its own, at the model's throughput over the last 10 minutes.",
    )
    on_track: bool | None = Field(
        default=None,
        description="eta at or before deadline (null without a deadline, or before the model "
        "has rendered anything lately).",
    )
    expires_at: datetime | None = Field(
        default=None,
        description="When prune deletes its outputs, sources and rows: its completion plus the "
        "team's retention_days (null while jobs are left).",
    )


class BatchesPublic(BaseModel):
    batches: list[BatchPublic] = Field(description="One page, newest first.")
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null on the last."
    )


class BatchJobPublic(JobPublic):
    batch_id: uuid.UUID = Field(description="The batch it belongs to.")
    sku: str = Field(description="Its image's name.")
    prompt_name: str = Field(description="Its prompt's name.")
    variant: int = Field(description="Its variant number (1-based).")


class BatchJobsPublic(BaseModel):
    jobs: list[BatchJobPublic] = Field(description="One page, in id order.")
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null on the last."
    )


class ManifestItem(BaseModel):
    """One row of ``GET /v1/batches/{id}/manifest`` (JSON items or CSV rows)."""

    job_id: uuid.UUID = Field(description="The job's id.")
    sku: str = Field(description="Its image's name.")
    prompt_name: str = Field(description="Its prompt's name.")
    variant: int = Field(description="Its variant number.")
    seed: int = Field(description="The seed it rendered with.")
    status: str = Field(description="The job's status.")
    error: str | None = Field(description="Why it failed.")
    review: str | None = Field(
        default=None, description="passed, needs_review, approved or rejected (null: not rendered)."
    )
    fidelity_structure: float | None = Field(
        default=None, description="Its fidelity structure score (see GET /v1/jobs/{id})."
    )
    fidelity_ssim: float | None = Field(default=None, description="Its SSIM against the source.")
    fidelity_colour_drift: float | None = Field(
        default=None, description="Its colour drift (mean ΔE2000) against the source."
    )
    fidelity_kept_pixels_changed: int | None = Field(
        default=None, description="Inpaint: kept pixels that changed (null for other kinds)."
    )
    preset: str | None = Field(
        default=None,
        description="The marketplace preset this row's output was made for (null: the render).",
    )
    path: str | None = Field(description="Where the output sits in the archive (if succeeded).")
    output_url: str | None = Field(description="Its output's URL (expires).")
    license: str | None = Field(
        default=None, description="The model's licence it rendered under (null: not rendered)."
    )
    commercial_use: bool | None = Field(
        default=None,
        description="Whether that licence allows commercial use (null: not rendered).",
    )


class BatchCanceled(BaseModel):
    id: uuid.UUID = Field(description="The batch's id.")
    canceled: int = Field(description="Queued jobs canceled now; running ones may finish.")


class BatchDeleting(BaseModel):
    id: uuid.UUID = Field(description="The batch's id.")
    status: Literal["deleting"] = Field(
        description="deleting: the batch reads as gone from now on (404); its jobs are "
        "canceled and what is final is removed; a running job's output and row go after, "
        "removed by the dispatcher within seconds."
    )
    jobs_left: int = Field(
        description="Jobs still held by a worker, removed after (0: nothing is left)."
    )


class BatchRetried(BaseModel):
    id: uuid.UUID = Field(description="The batch's id.")
    retried: int = Field(description="Failed jobs queued again.")


# --- Review (shared/review.py) -------------------------------------------------------------

ReviewDecision = Literal["approve", "reject"]
ReviewStateName = Literal["passed", "needs_review", "approved", "rejected"]
ReviewNote = Annotated[
    str | None,
    Field(
        default=None,
        max_length=MAX_NOTE_CHARS,
        description=f"Why, for people (at most {MAX_NOTE_CHARS:,} characters).",
    ),
]


class ReviewCreate(RequestBody):
    """``POST /v1/jobs/{id}/review``: a person's decision on a succeeded job's output."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"decision": "reject", "note": "logo drifts"}]},
    )

    decision: ReviewDecision = Field(description="approve or reject the output.")
    note: ReviewNote


class JobReviewDecision(RequestBody):
    job_id: uuid.UUID = Field(description="A job of the batch that succeeded.")
    decision: ReviewDecision = Field(description="approve or reject its output.")
    note: ReviewNote


class ReviewWhere(RequestBody):
    review: list[ReviewStateName] = Field(
        min_length=1,
        description="The review states to decide on: one (`passed`) or a list.",
    )

    @field_validator("review", mode="before")
    @classmethod
    def _one_state(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class BatchReviewCreate(RequestBody):
    """``POST /v1/batches/{id}/review``: either a list of decisions, each on its own job,
    or one decision on every output in some review states ("approve all passed")."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"decision": "approve", "where": {"review": "passed"}},
                {
                    "decisions": [
                        {
                            "job_id": "2f1c9a4e-8b7d-4c3a-9e21-5d6f7a8b9c0d",
                            "decision": "reject",
                            "note": "the strap is missing",
                        }
                    ]
                },
            ]
        },
    )

    decisions: list[JobReviewDecision] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_DECISIONS,
        description=f"One decision per job (at most {MAX_DECISIONS:,}); not with `where`.",
    )
    decision: ReviewDecision | None = Field(
        default=None, description="With `where`: the decision on every output it selects."
    )
    where: ReviewWhere | None = Field(
        default=None, description="With `decision`: which outputs, by review state."
    )
    note: ReviewNote


class BatchReviewed(BaseModel):
    id: uuid.UUID = Field(description="The batch's id.")
    decided: int = Field(description="Outputs whose decision was recorded now.")
    review_counts: ReviewCounts = Field(description="The batch's outputs by review state now.")


class BatchRerendered(BaseModel):
    id: uuid.UUID = Field(description="The batch's id.")
    rerendered: int = Field(
        description="Rejected outputs queued to render again with new seeds (same job ids)."
    )


# --- Presigned uploads ---------------------------------------------------------------------


class UploadPresignCreate(RequestBody):
    """``POST /v1/uploads/presign``: ask for a URL to PUT one image straight to storage."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"filename": "shoe.png"}]}
    )

    filename: str | None = Field(
        default=None, max_length=255, description="The file's name, kept with the upload."
    )


class UploadPresigned(BaseModel):
    """PUT the file's bytes to ``url`` (no API key, no extra headers), then complete it."""

    id: uuid.UUID = Field(description="Complete it with POST /v1/uploads/{id}/complete.")
    url: str = Field(description="PUT the bytes here (no API key, no extra headers).")
    method: str = Field(default="PUT", description="Always PUT.")
    expires_at: datetime = Field(description="When the URL stops working.")


# --- Webhooks ------------------------------------------------------------------------------

MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600


class WebhookEndpointCreate(RequestBody):
    """``POST /v1/webhooks``: a receiver for the team's events of the listed types."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://example.com/hooks/imgfarm",
                    "events": ["job.succeeded", "job.failed", "batch.completed"],
                    "description": "render notifications",
                }
            ]
        },
    )

    url: str = Field(min_length=1, max_length=2048, description="A public http(s) URL.")
    events: list[str] = Field(min_length=1, description="Event types: " + ", ".join(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=255, description="Your note about it.")

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; known: {', '.join(EVENT_TYPES)}")
        return list(dict.fromkeys(value))


class WebhookEndpointPublic(BaseModel):
    id: uuid.UUID = Field(description="The endpoint's id.")
    url: str = Field(description="Where events are sent.")
    events: list[str] = Field(description="The event types it receives.")
    description: str | None = Field(description="Your note about it.")
    created_at: datetime = Field(description="When it was registered.")
    disabled_at: datetime | None = Field(description="Set when the URL answered 410 Gone.")
    disabled_reason: str | None = Field(description="Why it was disabled.")
    previous_secret_expires_at: datetime | None = Field(
        description="Until then the rotated-out secret signs too (a second signature)."
    )


class WebhookEndpointCreated(WebhookEndpointPublic):
    secret: str = Field(description="The whsec_ signing secret, shown only now.")


class WebhookEndpointsPublic(BaseModel):
    endpoints: list[WebhookEndpointPublic] = Field(description="The team's endpoints.")


class WebhookRotate(RequestBody):
    """``POST /v1/webhooks/{id}/rotate`` (or ``/v1/webhooks/secret/rotate``)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"overlap_seconds": 3600}]}
    )

    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ROTATION_OVERLAP_SECONDS,
        description="How long the old secret keeps signing too (default: the farm's, "
        "IMGFARM_WEBHOOK_ROTATION_OVERLAP_SECONDS).",
    )


class WebhookSecretPublic(BaseModel):
    secret: str = Field(description="The current whsec_ signing secret.")
    previous_secret_expires_at: datetime | None = Field(
        description="Until then the rotated-out secret signs too."
    )


class WebhookAttemptPublic(BaseModel):
    attempt: int = Field(description="Its number, from 1.")
    started_at: datetime = Field(description="When it was sent.")
    status_code: int | None = Field(description="The receiver's answer (null: no answer).")
    latency_ms: int = Field(description="How long the receiver took.")
    error: str | None = Field(description="What went wrong, if anything.")
    outcome: str = Field(description="delivered, retry, failed, dead or disable.")


class WebhookDeliveryPublic(BaseModel):
    id: uuid.UUID = Field(description="The delivery's id.")
    event_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str = Field(
        description="job.succeeded, job.failed, job.canceled, batch.progress or batch.completed."
    )
    endpoint_id: uuid.UUID | None = Field(description="None: a job's or batch's webhook_url.")
    job_id: uuid.UUID | None = Field(description="The job the event is about.")
    batch_id: uuid.UUID | None = Field(description="The batch the event is about.")
    url: str = Field(description="Where it is sent.")
    status: str = Field(description="pending, delivered, failed (not retried) or dead.")
    attempts: int = Field(description="Attempts so far.")
    next_attempt_at: datetime | None = Field(description="When it is tried next (null: not again).")
    last_attempt_at: datetime | None = Field(description="When it was last tried.")
    last_status_code: int | None = Field(description="The receiver's last answer.")
    last_latency_ms: int | None = Field(description="How long the last attempt took.")
    last_error: str | None = Field(description="What went wrong last.")
    created_at: datetime = Field(description="When the event happened.")
    delivered_at: datetime | None = Field(description="When a receiver took it (2xx).")


class WebhookDeliveryDetail(WebhookDeliveryPublic):
    payload: dict[str, Any] = Field(description="The event body sent.")
    attempt_log: list[WebhookAttemptPublic] = Field(description="Every attempt, oldest first.")


class WebhookDeliveriesPublic(BaseModel):
    deliveries: list[WebhookDeliveryPublic] = Field(description="One page, newest first.")
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null on the last."
    )


class ApiKeyCreate(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"scope": "member"}]})

    scope: Literal["admin", "member"] = Field(
        "member",
        description="member: submit, read and review; admin: also manage keys, webhooks and "
        "team settings. Default member, the least a new key needs.",
    )


class ApiKeyPublic(BaseModel):
    """What may be shown about a key: never the key or its hash."""

    id: uuid.UUID = Field(description="The key's id (DELETE /v1/keys/{id} revokes it).")
    prefix: str = Field(description="The key's first characters (imf_...), to recognise it.")
    scope: Literal["admin", "member"] = Field(description="What the key may do.")
    created_at: datetime = Field(description="When it was created.")
    last_used_at: datetime | None = Field(
        description="When a request last used it, to the minute (null: never)."
    )
    revoked_at: datetime | None = Field(description="When it was revoked (null: active).")


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself: shown in this answer only, store it now.")


class ApiKeysPublic(BaseModel):
    keys: list[ApiKeyPublic] = Field(description="The team's keys, oldest first.")


class UsageCount(BaseModel):
    used: int = Field(description="How many so far.")
    limit: int | None = Field(description="The team's quota (null: unlimited).")


class ModelUsage(BaseModel):
    model: str = Field(description="The model alias.")
    images: int = Field(description="Images rendered with it this month.")
    gpu_seconds: float = Field(
        description="GPU time spent on them: each job's share of its pipeline call."
    )


class UsagePublic(BaseModel):
    """The team's use this month (UTC) and now, each against its quota."""

    month: str = Field(description="The month counted, YYYY-MM (UTC).")
    images: UsageCount = Field(
        description="Images rendered this month; the quota also counts queued jobs."
    )
    gpu_seconds: float = Field(description="GPU-seconds spent this month, all models.")
    models: list[ModelUsage] = Field(description="This month's use by model.")
    queued: UsageCount = Field(description="Jobs queued or running now.")
    max_batch: int | None = Field(description="Most jobs one batch may hold (null: the farm's).")
    rate_per_second: float | None = Field(
        description="Jobs the team may submit per second, sustained (null: unlimited)."
    )
