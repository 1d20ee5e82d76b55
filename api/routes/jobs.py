"""``/v1/jobs``: submit one render and follow it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from api import idempotency
from api.deps import FetchSlotsDep, RegistryDep, SessionDep, SettingsDep, StorageDep, TeamDep
from api.idempotency import IdempotencyKeyHeader
from api.owned import owned_row
from api.sources import SourceSpool
from api.submit import add_job, check_job
from shared.jobs import cancel
from shared.models import Job
from shared.schemas import JobAccepted, JobCreate, JobPublic, OutputPublic, RenderParams
from shared.storage import Storage

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_public(job: Job, storage: Storage, expires_in: int) -> JobPublic:
    outputs = [
        OutputPublic(
            url=storage.url(o["key"], expires_in),
            width=o["width"],
            height=o["height"],
            content_type=o["content_type"],
        )
        for o in job.outputs or []
    ]
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
        outputs=outputs,
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
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
        claim = idempotency.begin(session, team.id, idempotency_key, scope, body, ttl)
        if isinstance(claim, idempotency.Replay):
            return claim.response()
        job = add_job(session, team, body, checked)
        accepted = JobAccepted(id=job.id, status=job.status)
        idempotency.remember(claim, status.HTTP_202_ACCEPTED, accepted)
        session.commit()
    return accepted


@router.get("/{job_id}", response_model=JobPublic)
def get_job(
    job_id: uuid.UUID,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JobPublic:
    job = owned_row(session, Job, job_id, team, "job")
    return job_public(job, storage, settings.url_expiry_seconds)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(
    job_id: uuid.UUID,
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JobPublic:
    """A queued job never renders; a running one stops at its next denoising step.

    Canceling a finished job changes nothing and answers its current state.
    """
    job = owned_row(session, Job, job_id, team, "job")
    cancel(session, job_id)
    session.commit()
    session.refresh(job)
    return job_public(job, storage, settings.url_expiry_seconds)
