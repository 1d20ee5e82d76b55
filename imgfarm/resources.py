"""The typed halves of ``Client``: ``client.jobs``, ``client.batches``, ``client.uploads``
and ``client.webhooks``. Requests and answers are the api's own pydantic schemas
(shared/schemas.py), so a body is checked here, field by field, before it is sent."""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_exponential

from imgfarm.transport import StreamEvent, Transport
from shared.images import CONTENT_TYPES, EXTENSIONS
from shared.schemas import (
    BatchAccepted,
    BatchCanceled,
    BatchCreate,
    BatchPublic,
    BatchRerendered,
    BatchRetried,
    BatchReviewCreate,
    BatchReviewed,
    JobAccepted,
    JobCreate,
    JobPublic,
    JobsPublic,
    ManifestItem,
    ReviewCreate,
    ReviewDecision,
    UploadPublic,
    UploadsPublic,
    WebhookSecretPublic,
)

FINAL = frozenset({"succeeded", "failed", "canceled"})
# Polling: the first look after this long, then twice as long each time, up to the max.
POLL_FIRST_SECONDS = 0.25
POLL_MAX_SECONDS = 5.0
# The api takes at most 100 files per multipart request; keep each request modest.
UPLOAD_FILES_PER_REQUEST = 50
DOWNLOAD_THREADS = 8

Id = uuid.UUID | str
# An image reference: a data URL, an http(s) URL, an upload id, or the upload itself.
ImageRef = str | uuid.UUID | UploadPublic
# A file to upload: a path, or (file name, bytes, content type).
UploadFile = Path | str | tuple[str, bytes, str]
Body = TypeVar("Body", bound=BaseModel)
Polled = TypeVar("Polled", JobPublic, BatchPublic)


class Jobs:
    """``client.jobs``: one source image, one prompt, one render."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def submit(
        self, job: JobCreate | None = None, /, *, idempotency_key: str | None = None, **fields: Any
    ) -> JobAccepted:
        """``POST /v1/jobs`` with a ``JobCreate`` or its fields (``model``, ``prompt``,
        ``image``, ...). ``image`` and ``mask`` may be an upload (or its id)."""
        fields = {k: _image_ref(v) if k in ("image", "mask") else v for k, v in fields.items()}
        body = _body(JobCreate, job, fields)
        return JobAccepted.model_validate(self._t.create("/v1/jobs", body, idempotency_key))

    def get(self, job_id: Id) -> JobPublic:
        """``GET /v1/jobs/{id}``: status, params, timings and output URLs."""
        return JobPublic.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: Id, *, timeout: float = 300.0) -> JobPublic:
        """Poll (backing off up to 5 s) until the job is final (succeeded, failed or
        canceled) and return it; TimeoutError past ``timeout`` seconds."""
        return _poll(lambda: self.get(job_id), timeout, f"job {job_id}")

    def events(self, job_id: Id, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """``GET /v1/jobs/{id}/events``: a snapshot, then the job's changes as they happen,
        until ``end``; a dropped stream is resumed after the last event seen."""
        return self._t.events(f"/v1/jobs/{job_id}/events", last_event_id)

    def cancel(self, job_id: Id) -> JobPublic:
        """A queued job never renders; a running one stops at its next step."""
        return JobPublic.model_validate(self._t.json("POST", f"/v1/jobs/{job_id}/cancel"))

    def review(self, job_id: Id, decision: ReviewDecision, note: str | None = None) -> JobPublic:
        """``POST /v1/jobs/{id}/review``: approve or reject a succeeded job's output."""
        body = _body(ReviewCreate, None, {"decision": decision, "note": note})
        return JobPublic.model_validate(
            self._t.json("POST", f"/v1/jobs/{job_id}/review", json=body)
        )

    def download(self, job: JobPublic | Id, folder: Path) -> list[Path]:
        """Write the job's outputs to ``folder/{job id}-{n}.{ext}``; returns their paths
        (none for a job that did not succeed)."""
        if not isinstance(job, JobPublic):
            job = self.get(job)
        paths = [
            folder / f"{job.id}-{n}.{_extension(output.content_type)}"
            for n, output in enumerate(job.outputs)
        ]
        return [self._t.fetch_to(o.url, p) for o, p in zip(job.outputs, paths, strict=True)]

    # Last in the class: defined earlier, a method named list would shadow the builtin in
    # the other methods' annotations.
    def list(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        batch_id: Id | None = None,
        limit: int = 100,
    ) -> Iterator[JobPublic]:
        """``GET /v1/jobs``: the team's jobs, newest first, following the cursor from page
        to page (``limit`` per request); filters as the api takes them."""
        params: dict[str, Any] = {"status": status, "model": model, "batch_id": batch_id}
        params = {k: str(v) for k, v in params.items() if v is not None}
        cursor: str | None = None
        while True:
            query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
            page = JobsPublic.model_validate(self._t.json("GET", "/v1/jobs", params=query))
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class Batches:
    """``client.batches``: images x prompts x variants, one job each."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def submit(
        self,
        batch: BatchCreate | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> BatchAccepted:
        """``POST /v1/batches`` with a ``BatchCreate`` or its fields (``model``, ``images``,
        ``prompts``, ``variants``, ...). Images may be uploads (or their ids)."""
        if "images" in fields:
            fields["images"] = [_image_ref(i) for i in fields["images"]]
        body = _body(BatchCreate, batch, fields)
        return BatchAccepted.model_validate(self._t.create("/v1/batches", body, idempotency_key))

    def get(self, batch_id: Id) -> BatchPublic:
        """``GET /v1/batches/{id}``: counts by status, progress and ETA."""
        return BatchPublic.model_validate(self._t.json("GET", f"/v1/batches/{batch_id}"))

    def wait(self, batch_id: Id, *, timeout: float = 3600.0) -> BatchPublic:
        """Poll (backing off up to 5 s) until every job of the batch is final and return
        the batch; TimeoutError past ``timeout`` seconds."""
        return _poll(lambda: self.get(batch_id), timeout, f"batch {batch_id}")

    def events(self, batch_id: Id, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """``GET /v1/batches/{id}/events``: a snapshot, then every job's changes and the
        batch's counts as they happen, until ``end``; a dropped stream is resumed after the
        last event seen (``Last-Event-ID``), so each change comes once."""
        return self._t.events(f"/v1/batches/{batch_id}/events", last_event_id)

    def manifest(self, batch_id: Id) -> list[ManifestItem]:
        """Every job of the batch: sku, prompt name, variant, seed, status, output URL."""
        answer = self._t.json("GET", f"/v1/batches/{batch_id}/manifest")
        return [ManifestItem.model_validate(item) for item in answer["items"]]

    def download(self, batch_id: Id, folder: Path) -> list[Path]:
        """Write every succeeded output to ``folder/{sku}/{prompt}/{variant}.{ext}`` and
        return their paths. Files already there are kept, so a second call resumes."""
        root = folder.resolve()
        todo: list[tuple[str, Path]] = []
        paths: list[Path] = []
        for item in self.manifest(batch_id):
            if item.status != "succeeded" or not item.path or not item.output_url:
                continue
            path = (root / item.path).resolve()
            if not path.is_relative_to(root):
                raise ValueError(f"refusing to write outside {root}: {item.path!r}")
            paths.append(path)
            if not path.exists():
                todo.append((item.output_url, path))
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(lambda t: self._t.fetch_to(*t), todo))
        return paths

    def cancel(self, batch_id: Id) -> BatchCanceled:
        """Queued jobs of the batch never render; running ones may finish."""
        return BatchCanceled.model_validate(self._t.json("POST", f"/v1/batches/{batch_id}/cancel"))

    def retry(self, batch_id: Id) -> BatchRetried:
        """Queue the batch's failed jobs again."""
        return BatchRetried.model_validate(self._t.json("POST", f"/v1/batches/{batch_id}/retry"))

    def review(
        self,
        batch_id: Id,
        decisions: Sequence[tuple[Id, ReviewDecision] | tuple[Id, ReviewDecision, str]] = (),
        *,
        approve_where: Sequence[str] = (),
        reject_where: Sequence[str] = (),
        note: str | None = None,
    ) -> BatchReviewed:
        """``POST /v1/batches/{id}/review``: ``decisions`` as (job id, "approve" | "reject"
        [, note]) in one transaction, or one decision on every output in some review states
        (``approve_where=["passed"]``: approve all passed)."""
        fields: dict[str, Any] = {}
        if decisions:
            fields["decisions"] = [
                {"job_id": d[0], "decision": d[1], "note": d[2] if len(d) > 2 else None}
                for d in decisions
            ]
        for decision, states in (("approve", approve_where), ("reject", reject_where)):
            if states:
                fields.update(decision=decision, where={"review": list(states)}, note=note)
        body = _body(BatchReviewCreate, None, fields)
        answer = self._t.json("POST", f"/v1/batches/{batch_id}/review", json=body)
        return BatchReviewed.model_validate(answer)

    def rerender(self, batch_id: Id) -> BatchRerendered:
        """Render the batch's rejected outputs again with new seeds (same job ids; each
        earlier attempt is kept in the job's ``history``)."""
        answer = self._t.json("POST", f"/v1/batches/{batch_id}/rerender")
        return BatchRerendered.model_validate(answer)


class Uploads:
    """``client.uploads``: source images stored once, used by id in many jobs."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, *files: UploadFile) -> list[UploadPublic]:
        """Multipart ``POST /v1/uploads`` of paths or (name, bytes, content type) triples;
        returns one upload per file, in order (pass one as a job's ``image``). A retry after
        a lost answer may leave an unused upload behind (stored once: same bytes, same
        object), never a second job."""
        parts = [_upload_part(f) for f in files]
        uploads: list[UploadPublic] = []
        for start in range(0, len(parts), UPLOAD_FILES_PER_REQUEST):
            chunk = [("files", p) for p in parts[start : start + UPLOAD_FILES_PER_REQUEST]]
            answer = self._t.json("POST", "/v1/uploads", files=chunk)
            uploads += UploadsPublic.model_validate(answer).uploads
        return uploads


class Webhooks:
    """``client.webhooks``: what a receiver needs to check our signatures."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def secret(self) -> str:
        """The team's ``whsec_`` secret, which signs the events sent to a job's or batch's
        ``webhook_url`` (pass it to ``verify_webhook``)."""
        answer = self._t.json("GET", "/v1/webhooks/secret")
        return WebhookSecretPublic.model_validate(answer).secret


def _body(schema: type[Body], given: Body | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a request body given as a model or as its fields (checked here: a
    pydantic ValidationError names the field before anything is sent)."""
    if given is not None and fields:
        raise TypeError(f"pass a {schema.__name__} or its fields, not both")
    model = given if given is not None else schema.model_validate(fields)
    # Fields left out stay out: the api fills in the model's defaults.
    return model.model_dump(mode="json", exclude_unset=True)


def _image_ref(value: Any) -> Any:
    if isinstance(value, UploadPublic):
        return str(value.id)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _upload_part(file: UploadFile) -> tuple[str, bytes, str]:
    if isinstance(file, tuple):
        return file
    path = Path(file)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, path.read_bytes(), content_type


_FORMATS = {content_type: fmt for fmt, content_type in CONTENT_TYPES.items()}


def _extension(content_type: str) -> str:
    fmt = _FORMATS.get(content_type)
    return EXTENSIONS[fmt] if fmt else "bin"


def _poll(get: Callable[[], Polled], timeout: float, what: str) -> Polled:
    def timed_out(state: RetryCallState) -> Polled:
        assert state.outcome is not None
        last: Polled = state.outcome.result()
        raise TimeoutError(f"{what} still {last.status} after {timeout:.0f}s")

    retrying = Retrying(
        retry=retry_if_result(lambda found: found.status not in FINAL),
        wait=wait_exponential(multiplier=POLL_FIRST_SECONDS, max=POLL_MAX_SECONDS),
        stop=stop_after_delay(timeout),
        retry_error_callback=timed_out,
    )
    return retrying(get)  # type: ignore[no-any-return]
