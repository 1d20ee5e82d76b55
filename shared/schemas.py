"""Request and response bodies shared by the api, the worker and the CLI client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
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

MAX_METADATA_BYTES = 8 * 1024
MAX_SEED = 2**63 - 1


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


class RenderKnobs(RequestBody):
    """What a job and a batch both take, declared once so the two routes cannot drift: the
    model and its optional render knobs (left out, the model decides), a negative prompt,
    metadata and a webhook URL. Both are checked by one function (api/submit.py)."""

    model: str = Field(min_length=1, max_length=100)
    negative_prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="What to keep out of the render; in a batch, for prompts that do not "
        "give their own.",
    )
    strength: float | None = Field(default=None, gt=0, le=1)
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="A job's seed; a batch derives each job's seed from it. Drawn if omitted.",
    )
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    output_format: OutputFormat = "png"
    resize_mode: ResizeMode = Field(
        default="crop",
        description="How the source is brought to width x height: fit (stretch), crop "
        "(cover, center-crop) or pad (fit inside, pad with white; inpaint repaints the pad).",
    )
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="Public http(s) URL that receives the job.* events of this job (of every "
        "job of a batch, and batch.progress and batch.completed), signed with the team's "
        "webhook secret (GET /v1/webhooks/secret).",
    )

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
        return value


MASK_DESCRIPTION = (
    "Inpaint models only: white repaints, black keeps (bit-identical). Same forms as image "
    "and the source's size. Omitted: a source PNG's transparent pixels are repainted and its "
    "fully opaque ones kept."
)


class JobCreate(RenderKnobs):
    """``POST /v1/jobs``. Optional knobs left out take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000)
    image: str = Field(
        min_length=1, description="A data URL, an http(s) URL, or an id from POST /v1/uploads."
    )
    mask: str | None = Field(default=None, min_length=1, description=MASK_DESCRIPTION)


class RenderParams(BaseModel):
    """Parameters after defaults are filled in: exactly what the worker renders."""

    strength: float
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    output_format: OutputFormat
    # Default for jobs stored before resize modes existed (they were center-cropped).
    resize_mode: ResizeMode = "crop"


WARNINGS_DESCRIPTION = (
    "Why the job may not move, for people (e.g. no worker online for its model since a "
    "time); empty when nothing is wrong. Only queued jobs get one."
)


class JobAccepted(BaseModel):
    id: uuid.UUID
    status: str
    warnings: list[str] = Field(default_factory=list, description=WARNINGS_DESCRIPTION)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


class JobDurations(BaseModel):
    """How long the job took, from its timestamps; null until both ends are known."""

    queue_wait_seconds: float | None
    render_seconds: float | None
    total_seconds: float | None

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
    url: str
    width: int
    height: int
    content_type: str


class JobPublic(BaseModel):
    id: uuid.UUID
    status: str
    model: str
    prompt: str
    negative_prompt: str | None
    params: RenderParams
    metadata: dict[str, Any] | None
    attempts: int
    error: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    durations: JobDurations
    outputs: list[OutputPublic]
    warnings: list[str] = Field(default_factory=list, description=WARNINGS_DESCRIPTION)


class JobsPublic(BaseModel):
    jobs: list[JobPublic]
    next_cursor: str | None


class UploadPublic(BaseModel):
    id: uuid.UUID
    filename: str | None
    content_type: str
    width: int
    height: int
    size_bytes: int


class UploadsPublic(BaseModel):
    uploads: list[UploadPublic]


class ModelPublic(BaseModel):
    alias: str
    kind: str
    description: str
    defaults: dict[str, Any]
    limits: dict[str, Any]
    workers: list[str] = Field(
        default_factory=list, description="Names of the workers online now that pin this model."
    )
    last_seen_at: datetime | None = None
    warning: str | None = None


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


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
        min_length=1, description="A data URL, an http(s) URL, or an id from POST /v1/uploads."
    )
    sku: Name | None = None
    mask: str | None = Field(default=None, min_length=1, description=MASK_DESCRIPTION)


class BatchPrompt(RequestBody):
    """One prompt of a batch; ``name`` names its folder (default: a slug of the prompt)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000)
    name: Name | None = None
    negative_prompt: str | None = Field(default=None, max_length=2000)


class BatchCreate(RenderKnobs):
    """``POST /v1/batches``: every image x every prompt x ``variants`` seeds, one job each.

    Images and prompts may be plain strings or objects naming them; an image object may
    carry its own ``mask`` (inpaint models). The knobs (RenderKnobs) are the batch's, for
    every job, checked as a job's are; left out, they take the model's defaults. Each job's
    seed is derived from ``seed`` (drawn if omitted).
    """

    model_config = ConfigDict(extra="forbid")

    images: list[BatchImage] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    prompts: list[BatchPrompt] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    variants: int = Field(default=1, ge=1, le=MAX_BATCH_JOBS)

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
        return len(self.images) * len(self.prompts) * self.variants


class BatchAccepted(BaseModel):
    id: uuid.UUID
    job_count: int
    seed: int


class BatchCounts(BaseModel):
    """Jobs of a batch by status; they add up to ``job_count``."""

    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0


class BatchPublic(BaseModel):
    id: uuid.UUID
    status: str = Field(
        description="queued (nothing started), running, then succeeded (all jobs did), "
        "failed (some failed) or canceled (some canceled, none failed)."
    )
    model: str
    job_count: int
    counts: BatchCounts
    progress: float = Field(description="Finished jobs (any final state) / job_count.")
    seed: int
    params: dict[str, Any]
    image_count: int
    prompt_count: int
    variants: int
    metadata: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    canceled_at: datetime | None
    jobs_per_second: float | None = Field(
        description="Observed throughput: finished renders per second since the first started."
    )
    eta_seconds: float | None = Field(description="Queued and running jobs / jobs_per_second.")


class BatchesPublic(BaseModel):
    batches: list[BatchPublic]
    next_cursor: str | None


class BatchJobPublic(JobPublic):
    batch_id: uuid.UUID
    sku: str
    prompt_name: str
    variant: int


class BatchJobsPublic(BaseModel):
    jobs: list[BatchJobPublic]
    next_cursor: str | None


class ManifestItem(BaseModel):
    """One row of ``GET /v1/batches/{id}/manifest`` (JSON items or CSV rows)."""

    job_id: uuid.UUID
    sku: str
    prompt_name: str
    variant: int
    seed: int
    status: str
    error: str | None
    path: str | None = Field(description="Where the output sits in the archive (if succeeded).")
    output_url: str | None


class BatchCanceled(BaseModel):
    id: uuid.UUID
    canceled: int = Field(description="Queued jobs canceled now; running ones may finish.")


class BatchRetried(BaseModel):
    id: uuid.UUID
    retried: int = Field(description="Failed jobs queued again.")


# --- Presigned uploads ---------------------------------------------------------------------


class UploadPresignCreate(RequestBody):
    """``POST /v1/uploads/presign``: ask for a URL to PUT one image straight to storage."""

    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(default=None, max_length=255)


class UploadPresigned(BaseModel):
    """PUT the file's bytes to ``url`` (no API key, no extra headers), then complete it."""

    id: uuid.UUID
    url: str
    method: str = "PUT"
    expires_at: datetime


# --- Webhooks ------------------------------------------------------------------------------

MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600


class WebhookEndpointCreate(RequestBody):
    """``POST /v1/webhooks``: a receiver for the team's events of the listed types."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="A public http(s) URL.")
    events: list[str] = Field(min_length=1, description="Event types: " + ", ".join(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=255)

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; known: {', '.join(EVENT_TYPES)}")
        return list(dict.fromkeys(value))


class WebhookEndpointPublic(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    disabled_at: datetime | None = Field(description="Set when the URL answered 410 Gone.")
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None = Field(
        description="Until then the rotated-out secret signs too (a second signature)."
    )


class WebhookEndpointCreated(WebhookEndpointPublic):
    secret: str = Field(description="The whsec_ signing secret, shown only now.")


class WebhookEndpointsPublic(BaseModel):
    endpoints: list[WebhookEndpointPublic]


class WebhookRotate(RequestBody):
    """``POST /v1/webhooks/{id}/rotate`` (or ``/v1/webhooks/secret/rotate``)."""

    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ROTATION_OVERLAP_SECONDS,
        description="How long the old secret keeps signing too (default: the farm's, "
        "IMGFARM_WEBHOOK_ROTATION_OVERLAP_SECONDS).",
    )


class WebhookSecretPublic(BaseModel):
    secret: str = Field(description="The current whsec_ signing secret.")
    previous_secret_expires_at: datetime | None


class WebhookAttemptPublic(BaseModel):
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    outcome: str = Field(description="delivered, retry, failed, dead or disable.")


class WebhookDeliveryPublic(BaseModel):
    id: uuid.UUID
    event_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str
    endpoint_id: uuid.UUID | None = Field(description="None: a job's or batch's webhook_url.")
    job_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    url: str
    status: str = Field(description="pending, delivered, failed (not retried) or dead.")
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryDetail(WebhookDeliveryPublic):
    payload: dict[str, Any]
    attempt_log: list[WebhookAttemptPublic]


class WebhookDeliveriesPublic(BaseModel):
    deliveries: list[WebhookDeliveryPublic]
    next_cursor: str | None
