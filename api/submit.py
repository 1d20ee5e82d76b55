"""Create jobs. The database commit is the promise; the dispatcher hands jobs to the broker."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from api.params import model_spec, resolve_params
from api.sources import resolve_source
from shared.dispatch import nudge
from shared.models import Job, Team
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
    nudge(session)
    return job
