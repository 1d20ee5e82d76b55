"""Create jobs and hand them to the broker: the database commit is the promise."""

from __future__ import annotations

import logging
import uuid

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.params import model_spec, resolve_params
from api.sources import resolve_source
from shared.broker import send_render
from shared.models import Job, Team, utcnow
from shared.registry import ModelSpec
from shared.schemas import JobCreate
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


def create_job(
    session: Session,
    team: Team,
    body: JobCreate,
    *,
    registry: dict[str, ModelSpec],
    storage: Storage,
    settings: Settings,
) -> Job:
    """Validate ``body`` fully, store its source, and add the queued job (caller commits)."""
    # 1. cheap checks first, so bad params never cost a fetch or an upload
    spec = model_spec(registry, body.model)
    params = resolve_params(spec, body)
    # 2. the source image: fetched, proven decodable, stored
    key = resolve_source(
        body.image, "image", team=team, session=session, storage=storage, settings=settings
    )
    # 3. the row: the queue of record
    job = Job(
        team_id=team.id,
        model=spec.alias,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        params=params.model_dump(),
        source_key=key,
        meta=body.metadata,
    )
    session.add(job)
    session.flush()
    return job


def enqueue_jobs(
    celery: Celery, session_factory: sessionmaker[Session], jobs: list[tuple[uuid.UUID, str]]
) -> int:
    """Send committed jobs to their model queues; returns how many went.

    A broker outage must not fail the request: the jobs are committed and stay queued,
    and are handed over again later (the dispatcher's job).
    """
    sent: list[uuid.UUID] = []
    for job_id, model in jobs:
        try:
            send_render(celery, str(job_id), model)
        except Exception as e:  # kombu raises many types for "broker unreachable"
            log.warning("broker unavailable, %d job(s) stay queued: %s", len(jobs) - len(sent), e)
            break
        sent.append(job_id)
    if sent:
        with session_factory() as session:
            session.execute(update(Job).where(Job.id.in_(sent)).values(enqueued_at=utcnow()))
            session.commit()
    return len(sent)
