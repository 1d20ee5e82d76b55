"""Review of rendered outputs by a person: decisions on one job or many of a batch, and
rendering a batch's rejected outputs again. The writers are shared/review.py (decisions)
and shared/jobs.py (the rerender transition); these routes check ownership and bodies."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import batches as batch_service
from api.batches import owned_job
from api.deps import CallerDep, SessionDep, SettingsDep, StorageDep, TeamDep
from api.errors import KEYED_ERRORS, errors_for
from api.routes.jobs import job_public
from shared.dispatch import nudge
from shared.errors import InvalidRequest, NotFound
from shared.jobs import rerender_rejected_of_batch
from shared.models import Batch, Job
from shared.review import JobDecision, decide, decide_each, decide_where
from shared.review_status import ReviewState, review_counts
from shared.schemas import (
    BatchRerendered,
    BatchReviewCreate,
    BatchReviewed,
    JobPublic,
    ReviewCounts,
    ReviewCreate,
)

router = APIRouter(tags=["review"], responses=KEYED_ERRORS)

JobId = Annotated[uuid.UUID, Path(description="A job id from POST /v1/jobs or a listing.")]
BatchId = Annotated[uuid.UUID, Path(description="A batch id from POST /v1/batches.")]
# A filter by review state, on listings, the manifest and the archive.
ReviewQuery = Annotated[
    str | None,
    Query(
        description="Only outputs in these review states: one or a comma list "
        "(`passed,approved`: what may be published).",
        max_length=200,
    ),
]


def get_reviewer(caller: CallerDep) -> uuid.UUID:
    """The id of the API key the request came with: who decided."""
    return caller.key_id


ReviewerDep = Annotated[uuid.UUID, Depends(get_reviewer)]


def not_reviewable(job_id: uuid.UUID, status: str, field: str) -> InvalidRequest:
    """409: only a succeeded job has an output to decide on."""
    return InvalidRequest(
        field,
        f"job {job_id} is {status}: only a succeeded job's output can be reviewed",
        status_code=409,
    )


@router.post(
    "/v1/jobs/{job_id}/review", response_model=JobPublic, responses=errors_for(404, 409, 413, 422)
)
def review_job(
    job_id: JobId,
    body: ReviewCreate,
    team: TeamDep,
    reviewer: ReviewerDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JobPublic:
    """Approve or reject a succeeded job's output, with an optional note; records who (the
    key's id) and when. Deciding again replaces the decision (a person changes their mind)."""
    job = owned_job(session, job_id, team)
    if not decide(session, job.id, body.decision, body.note, reviewer):
        session.rollback()
        session.refresh(job)
        raise not_reviewable(job.id, job.status, "decision")
    session.commit()
    session.refresh(job)
    return job_public(job, storage, settings.url_expiry_seconds)


@router.post(
    "/v1/batches/{batch_id}/review",
    response_model=BatchReviewed,
    responses=errors_for(404, 409, 413, 422),
)
def review_batch(
    batch_id: BatchId,
    body: BatchReviewCreate,
    team: TeamDep,
    reviewer: ReviewerDep,
    session: SessionDep,
) -> BatchReviewed:
    """Many decisions in one transaction: a list (each job its own decision and note; a
    job that did not succeed refuses the whole list, 409), or one decision on every
    succeeded output in some review states (``{"decision": "approve", "where": {"review":
    "passed"}}``). Answers how many were decided and the batch's review counts."""
    batch = batch_service.get_batch(session, team, batch_id)
    if body.decisions is not None:
        if body.decision is not None or body.where is not None:
            raise InvalidRequest("decisions", "give either decisions or decision with where")
        decided = _decide_each(session, batch, body, reviewer)
    else:
        if body.decision is None:
            raise InvalidRequest("decision", "required with where (or give decisions)")
        if body.where is None:
            raise InvalidRequest("where", 'required with decision (e.g. {"review": "passed"})')
        states = [ReviewState(s) for s in body.where.review]
        decided = decide_where(session, batch.id, body.decision, states, body.note, reviewer)
    counts = review_counts(session, [batch.id])[batch.id]
    session.commit()
    return BatchReviewed(id=batch.id, decided=decided, review_counts=ReviewCounts(**counts))


def _decide_each(
    session: Session, batch: Batch, body: BatchReviewCreate, reviewer: uuid.UUID
) -> int:
    assert body.decisions is not None
    if body.note is not None:
        raise InvalidRequest("note", "with decisions, each decision carries its own note")
    wanted = [JobDecision(d.job_id, d.decision, d.note) for d in body.decisions]
    decided = set(decide_each(session, batch.id, wanted, reviewer))
    for index, d in enumerate(wanted):
        if d.job_id not in decided:
            session.rollback()  # all or nothing: the list is one transaction
            status = session.scalar(
                select(Job.status).where(Job.id == d.job_id, Job.batch_id == batch.id)
            )
            field = f"decisions[{index}].job_id"
            if status is None:
                raise NotFound(f"no job {d.job_id} in batch {batch.id}")
            raise not_reviewable(d.job_id, status, field)
    return len(decided)


@router.post(
    "/v1/batches/{batch_id}/rerender",
    response_model=BatchRerendered,
    responses=errors_for(404, 422),
)
def rerender_batch(
    batch_id: BatchId,
    team: TeamDep,
    session: SessionDep,
    review: Annotated[
        Literal["rejected"],
        Query(description="Which outputs to render again: the rejected ones."),
    ] = "rejected",
) -> BatchRerendered:
    """Render the batch's rejected outputs again, with new seeds, as new attempts of the
    same jobs: their ids, grid places, archive names and URLs stay; each earlier attempt
    (outputs, scores, review) is kept in the job's ``history``."""
    batch = batch_service.get_batch(session, team, batch_id)
    rerendered = rerender_rejected_of_batch(session, batch.id, batch.seed)
    if rerendered:
        nudge(session, batch.model)  # at commit: the dispatcher hands them over at once
    session.commit()
    return BatchRerendered(id=batch.id, rerendered=rerendered)
