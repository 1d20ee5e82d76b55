"""``/v1/jobs``: submit one render and follow it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import idempotency
from api.batches import outside_deleted_batches, owned_job
from api.deps import FetchSlotsDep, RegistryDep, SessionDep, SettingsDep, StorageDep, TeamDep
from api.errors import KEYED_ERRORS, errors_for
from api.idempotency import IdempotencyKeyHeader
from api.pagination import newest_first_page
from api.sources import SourceSpool
from api.submit import add_job, check_job
from shared.job_status import JobStatus
from shared.jobs import cancel
from shared.models import Job, Team
from shared.schemas import (
    AttemptPublic,
    FidelityPublic,
    JobAccepted,
    JobCreate,
    JobDurations,
    JobPublic,
    JobsPublic,
    OutputPublic,
    ProvenancePublic,
    RenderParams,
)
from shared.settings import Settings
from shared.storage import Storage
from shared.workers import model_workers

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=KEYED_ERRORS)

JobId = Annotated[uuid.UUID, Path(description="A job id from POST /v1/jobs or a listing.")]


def job_public(
    job: Job, storage: Storage, expires_in: int, warnings: Sequence[str] = ()
) -> JobPublic:
    outputs = outputs_public(job.outputs or [], storage, expires_in)
    return JobPublic(
        id=job.id,
        status=job.status,
        model=job.model,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        params=RenderParams(**job.params),
        metadata=job.meta,
        attempts=job.attempts,
        error=job.error,
        worker=job.worker,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        durations=JobDurations.between(job.created_at, job.started_at, job.finished_at),
        fidelity=None if job.fidelity is None else FidelityPublic(**job.fidelity),
        review=job.review,
        outputs=outputs,
        warnings=list(warnings),
        review_note=job.review_note,
        reviewed_by=job.reviewed_by,
        reviewed_at=job.reviewed_at,
        provenance=provenance_public(job.provenance),
        history=[attempt_public(a, storage, expires_in) for a in job.history or []],
        # Given, or found by the worker for mask "auto" (null until then): downloadable, to
        # check it, fix it and resubmit it as the mask.
        mask_url=None if job.mask_key is None else storage.url(job.mask_key, expires_in),
    )


def provenance_public(provenance: dict[str, Any] | None) -> ProvenancePublic | None:
    """The stored provenance's public facts; the rest (params, timings) is shown elsewhere."""
    if not provenance:
        return None
    return ProvenancePublic.model_validate(
        {k: provenance[k] for k in ProvenancePublic.model_fields if k in provenance}
    )


def attempt_public(attempt: dict[str, Any], storage: Storage, expires_in: int) -> AttemptPublic:
    """An earlier attempt kept in ``jobs.history`` (shared/review.py attempt_record), its
    outputs' URLs signed as the job's are."""
    outputs = outputs_public(attempt["outputs"], storage, expires_in)
    return AttemptPublic(**{**attempt, "outputs": outputs})


def outputs_public(
    outputs: Sequence[dict[str, Any]], storage: Storage, expires_in: int
) -> list[OutputPublic]:
    """Stored outputs as answers describe them, each with a URL that expires."""
    return [
        OutputPublic(
            url=storage.url(o["key"], expires_in),
            width=o["width"],
            height=o["height"],
            content_type=o["content_type"],
            preset=o.get("preset"),
        )
        for o in outputs
    ]


def queued_warnings(
    session: Session, settings: Settings, jobs: Sequence[Job]
) -> dict[uuid.UUID, list[str]]:
    """Job id -> why it may not move, for the queued ones among ``jobs`` (one lookup of the
    workers of their models): a queued job's only clue that nothing will render it."""
    queued = [j for j in jobs if j.status == JobStatus.QUEUED.value]
    if not queued:
        return {}
    workers = model_workers(session, settings.lease_seconds, {j.model for j in queued})
    return {j.id: [w] for j in queued if (w := workers[j.model].warning) is not None}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors_for(403, 404, 409, 413, 422, 429),
)
def submit_job(
    body: JobCreate,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    registry: RegistryDep,
    slots: FetchSlotsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobAccepted | Response:
    """Queue one render of ``image`` with ``prompt``; knobs left out take the model's
    defaults (``GET /v1/models``).

    Everything is checked (and URLs fetched) before anything is written: a refusal names
    the field. Follow the job with ``GET /v1/jobs/{id}`` or a ``webhook_url``; ``warnings``
    says when no worker is online for the model.
    """
    scope, ttl = "POST /v1/jobs", settings.idempotency_ttl_seconds
    # 1. a retry of an answered request replays before fetching anything again
    replay = idempotency.replay_of(session, team.id, idempotency_key, scope, body, ttl)
    if replay is not None:
        return replay.response()
    with SourceSpool(team.id) as spool:
        # 2. everything checked, sources fetched, no connection held, nothing written
        checked = check_job(
            session,
            team,
            body,
            registry=registry,
            storage=storage,
            settings=settings,
            slots=slots,
            spool=spool,
        )
        # 3. store the sources (content-addressed: a racing replay below wrote the same),
        # then a short transaction: claim the key, add the row
        spool.store(storage)
        workers = model_workers(session, settings.lease_seconds, [body.model])[body.model]
        claim = idempotency.begin(session, team.id, idempotency_key, scope, body, ttl)
        if isinstance(claim, idempotency.Replay):
            return claim.response()
        job = add_job(session, team, body, checked)
        accepted = JobAccepted(id=job.id, status=job.status, warnings=workers.warnings)
        idempotency.remember(claim, status.HTTP_202_ACCEPTED, accepted)
        session.commit()
    return accepted


@router.get("/{job_id}", response_model=JobPublic, responses=errors_for(404, 422))
def get_job(
    job_id: JobId,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JobPublic:
    """The job's status, params (with the seed used), timestamps and durations, outputs
    (URLs that expire) and, while it is queued, warnings."""
    job = owned_job(session, job_id, team)
    warnings = queued_warnings(session, settings, [job]).get(job.id, [])
    return job_public(job, storage, settings.url_expiry_seconds, warnings)


@router.get("", response_model=JobsPublic, responses=errors_for(422))
def list_jobs(
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    model: Annotated[
        str | None, Query(max_length=100, description="Only jobs of this model alias.")
    ] = None,
    batch_id: Annotated[uuid.UUID | None, Query(description="Only the jobs of this batch.")] = None,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Jobs per page.")] = 100,
) -> JobsPublic:
    """The team's jobs (single and batch ones), newest first, a page at a time; filters
    combine. Pages stay stable while jobs are added."""
    jobs, next_cursor = team_jobs(session, team, status, model, batch_id, cursor, limit)
    warnings = queued_warnings(session, settings, jobs)
    return JobsPublic(
        jobs=[
            job_public(j, storage, settings.url_expiry_seconds, warnings.get(j.id, ()))
            for j in jobs
        ],
        next_cursor=next_cursor,
    )


def team_jobs(
    session: Session,
    team: Team,
    status: JobStatus | None,
    model: str | None,
    batch_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Job], str | None]:
    """One page of the team's jobs, newest first, on ix_jobs_team_created (team_id,
    created_at): the filters narrow the rows read from it, the team always bounds them."""
    query = (
        select(Job)
        .where(Job.team_id == team.id, outside_deleted_batches())
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(Job.status == status.value)
    if model is not None:
        query = query.where(Job.model == model)
    if batch_id is not None:
        query = query.where(Job.batch_id == batch_id)
    return newest_first_page(session, query, Job, cursor, limit)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors_for(404, 422))
def cancel_job(
    job_id: JobId,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JobPublic:
    """A queued job never renders; a running one stops at its next denoising step.

    Canceling a finished job changes nothing and answers its current state.
    """
    job = owned_job(session, job_id, team)
    cancel(session, job_id)
    session.commit()
    session.refresh(job)
    return job_public(job, storage, settings.url_expiry_seconds)
