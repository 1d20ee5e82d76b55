"""``/v1/batches``: thousands of variants in one request, followed and fetched as a whole."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session, sessionmaker

from api import archive, idempotency
from api import batches as service
from api.deps import FetchSlotsDep, RegistryDep, SessionDep, SettingsDep, StorageDep, TeamDep
from api.errors import KEYED_ERRORS, errors_for
from api.idempotency import IdempotencyKeyHeader
from api.routes.jobs import job_public
from api.routes.review import ReviewQuery
from api.sources import SourceSpool
from shared.jobs import JobStatus
from shared.models import Job
from shared.prune import delete_batch as delete_batch_data
from shared.prune import expires_at
from shared.review_status import parse_review_states, review_counts
from shared.schemas import (
    BatchAccepted,
    BatchCanceled,
    BatchCreate,
    BatchDeleting,
    BatchesPublic,
    BatchEstimate,
    BatchJobPublic,
    BatchJobsPublic,
    BatchPublic,
    BatchRetried,
)
from shared.storage import Storage
from shared.workers import model_workers

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=KEYED_ERRORS)
BatchId = Annotated[uuid.UUID, Path(description="A batch id from POST /v1/batches.")]
NOT_FOUND = errors_for(404, 422)
DryRunQuery = Annotated[
    bool,
    Query(description="true: check it, answer its job count, GPU-seconds and ETA; create nothing."),
]

CursorQuery = Annotated[
    str | None, Query(description="next_cursor of the previous page; omit for the first.")
]
LimitQuery = Annotated[int, Query(ge=1, le=500, description="Jobs per page.")]
# Each listed batch's counts come from its jobs (one GROUP BY for the page): keep pages small.
BatchLimitQuery = Annotated[int, Query(ge=1, le=100, description="Batches per page.")]


def _session_factory(request: Request) -> sessionmaker[Session]:
    # Streamed answers read the database while they stream, after the request's own
    # session is closed: they open short sessions of their own.
    return request.app.state.session_factory  # type: ignore[no-any-return]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses={
        **errors_for(403, 404, 409, 413, 422, 429),
        200: {"model": BatchEstimate, "description": "dry_run=true: the estimate, nothing made."},
    },
)
def create_batch(
    body: BatchCreate,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    registry: RegistryDep,
    slots: FetchSlotsDep,
    idempotency_key: IdempotencyKeyHeader = None,
    dry_run: DryRunQuery = False,
) -> BatchAccepted | Response:
    """Create images x prompts x variants jobs in one transaction (at most 10,000); with
    ``dry_run=true``, check it all the same and answer 200 with its cost and ETA instead,
    creating nothing (no rows, no stored sources)."""
    scope, ttl = "POST /v1/batches", settings.idempotency_ttl_seconds
    # 1. a retry of an answered request replays before fetching anything again
    replay = idempotency.replay_of(session, team.id, idempotency_key, scope, body, ttl)
    if replay is not None:
        return replay.response()
    with SourceSpool(team.id) as spool:
        # 2. everything checked, images fetched, no connection held, nothing written
        checked = service.check_batch(
            session,
            team,
            body,
            registry=registry,
            storage=storage,
            settings=settings,
            slots=slots,
            spool=spool,
        )
        if dry_run:  # the spool is discarded on leaving: nothing was stored
            estimate = service.estimate_batch(session, checked.jobs.spec.alias, body.job_count)
            return JSONResponse(estimate.model_dump(mode="json"))
        # 3. store the sources (content-addressed: a racing replay below wrote the same),
        # then a short transaction: claim the key, insert the batch and its jobs
        spool.store(storage)
        workers = model_workers(session, settings.lease_seconds, [body.model])[body.model]
        claim = idempotency.begin(session, team.id, idempotency_key, scope, body, ttl)
        if isinstance(claim, idempotency.Replay):
            return claim.response()
        batch = service.create_batch(session, team, body, checked)
        accepted = BatchAccepted(
            id=batch.id,
            job_count=batch.job_count,
            seed=batch.seed,
            warnings=workers.warnings,
        )
        idempotency.remember(claim, status.HTTP_202_ACCEPTED, accepted)
        session.commit()
    return accepted


@router.get("", response_model=BatchesPublic, responses=errors_for(422))
def list_batches(
    team: TeamDep, session: SessionDep, cursor: CursorQuery = None, limit: BatchLimitQuery = 20
) -> BatchesPublic:
    """The team's batches, newest first."""
    batches, next_cursor = service.list_batches(session, team, cursor, limit)
    ids = [b.id for b in batches]
    stats = service.batch_stats(session, ids) if batches else {}
    reviews = review_counts(session, ids)
    public = [service.batch_public(b, stats[b.id], reviews=reviews[b.id]) for b in batches]
    for b, p in zip(batches, public, strict=True):
        p.expires_at = expires_at(b.completed_at, team.retention_days)
    return BatchesPublic(batches=public, next_cursor=next_cursor)


@router.get("/{batch_id}", response_model=BatchPublic, responses=NOT_FOUND)
def get_batch(batch_id: BatchId, team: TeamDep, session: SessionDep) -> BatchPublic:
    """Counts by status and by review state, progress, timings and an ETA from the
    observed throughput; with a deadline, whether that ETA makes it (``on_track``)."""
    batch = service.get_batch(session, team, batch_id)
    stats = service.batch_stats(session, [batch.id])[batch.id]
    public = service.batch_public(
        batch, stats, reviews=review_counts(session, [batch.id])[batch.id]
    )
    public.expires_at = expires_at(batch.completed_at, team.retention_days)
    return service.with_schedule(session, batch, stats, public)


@router.get("/{batch_id}/jobs", response_model=BatchJobsPublic, responses=NOT_FOUND)
def list_batch_jobs(
    batch_id: BatchId,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
    review: ReviewQuery = None,
) -> BatchJobsPublic:
    """The batch's jobs, optionally of one status and of some review states
    (``?review=needs_review``), a page at a time."""
    states = parse_review_states(review)
    batch = service.get_batch(session, team, batch_id)
    jobs, next_cursor = service.list_jobs(session, batch, status, cursor, limit, states)
    return BatchJobsPublic(
        jobs=[_batch_job_public(job, storage, settings.url_expiry_seconds) for job in jobs],
        next_cursor=next_cursor,
    )


def _batch_job_public(job: Job, storage: Storage, expires_in: int) -> BatchJobPublic:
    assert job.batch_id is not None and job.sku and job.prompt_name and job.variant
    return BatchJobPublic(
        **job_public(job, storage, expires_in).model_dump(),
        batch_id=job.batch_id,
        sku=job.sku,
        prompt_name=job.prompt_name,
        variant=job.variant,
    )


@router.get(
    "/{batch_id}/manifest",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}, **NOT_FOUND},
)
def get_manifest(
    batch_id: BatchId,
    request: Request,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="JSON items or CSV rows (the same columns).")
    ] = "json",
    review: ReviewQuery = None,
) -> StreamingResponse:
    """Every job (or those whose output is in the ``review`` states given): sku, prompt
    name, variant, seed, status, error, archive path, output URL."""
    only = _review_where(review)
    batch = service.get_batch(session, team, batch_id)
    items = archive.manifest_items(
        archive.iter_rows(_session_factory(request), batch.id, *only),
        storage,
        settings.url_expiry_seconds,
    )
    if format == "csv":
        return StreamingResponse(
            archive.manifest_csv(items),
            media_type="text/csv; charset=utf-8",
            headers=_attachment(f"batch-{batch.id}.csv"),
        )
    return StreamingResponse(archive.manifest_json(batch.id, items), media_type="application/json")


@router.get(
    "/{batch_id}/archive",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, **NOT_FOUND},
)
def get_archive(
    batch_id: BatchId,
    request: Request,
    team: TeamDep,
    session: SessionDep,
    storage: StorageDep,
    review: ReviewQuery = None,
) -> StreamingResponse:
    """A zip of every succeeded output (or of those in the ``review`` states given:
    ``passed,approved`` is what may be published) as ``{sku}/{prompt}/{variant}.{ext}``,
    streamed."""
    only = _review_where(review)
    batch = service.get_batch(session, team, batch_id)
    rows = archive.iter_rows(
        _session_factory(request), batch.id, Job.status == JobStatus.SUCCEEDED.value, *only
    )
    return StreamingResponse(
        archive.iter_archive(archive.archive_entries(rows), storage),
        media_type="application/zip",
        headers=_attachment(f"batch-{batch.id}.zip"),
    )


def _review_where(review: str | None) -> tuple[ColumnElement[bool], ...]:
    """The ``?review=`` filter as a condition on the rows (none when absent)."""
    states = parse_review_states(review)
    return () if states is None else (Job.review.in_([s.value for s in states]),)


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


@router.post("/{batch_id}/cancel", response_model=BatchCanceled, responses=NOT_FOUND)
def cancel_batch(batch_id: BatchId, team: TeamDep, session: SessionDep) -> BatchCanceled:
    """Queued jobs never render; running ones may finish."""
    batch = service.get_batch(session, team, batch_id)
    canceled = service.cancel_batch(session, batch)
    session.commit()
    return BatchCanceled(id=batch.id, canceled=canceled)


@router.delete(
    "/{batch_id}",
    response_model=BatchDeleting,
    status_code=status.HTTP_202_ACCEPTED,
    responses=NOT_FOUND,
)
def delete_batch(
    batch_id: BatchId, request: Request, team: TeamDep, session: SessionDep, storage: StorageDep
) -> BatchDeleting:
    """Delete the batch: from this answer on it reads as gone (404, here too). Its jobs are
    canceled and its outputs, the sources only it uses and its rows removed: at once for
    what is final, by the dispatcher for what a running job still holds (``jobs_left``)."""
    batch = service.get_batch(session, team, batch_id)
    service.mark_deleting(session, batch)
    session.commit()
    session.close()  # the deletion runs in short transactions of its own
    left = delete_batch_data(_session_factory(request), storage, batch.id)
    return BatchDeleting(id=batch.id, status="deleting", jobs_left=left)


@router.post("/{batch_id}/retry", response_model=BatchRetried, responses=NOT_FOUND)
def retry_batch(batch_id: BatchId, team: TeamDep, session: SessionDep) -> BatchRetried:
    """Queue the batch's failed jobs again (and only those)."""
    batch = service.get_batch(session, team, batch_id)
    retried = service.retry_batch(session, batch)
    session.commit()
    return BatchRetried(id=batch.id, retried=retried)
