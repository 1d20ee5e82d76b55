"""Create jobs. The database commit is the promise; the dispatcher hands jobs to the broker."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from api.params import check_inpaint_inputs, model_spec, resolve_params
from api.sources import check_webhook_url, resolve_source
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
    webhook_url = None
    if body.webhook_url is not None:
        webhook_url = check_webhook_url(body.webhook_url, "webhook_url", settings)
    # 2. the source image (and an inpaint mask): fetched, proven decodable, stored
    key = resolve_source(
        body.image, "image", team=team, session=session, storage=storage, settings=settings
    )
    mask_key = None
    if body.mask is not None:
        mask_key = resolve_source(
            body.mask, "mask", team=team, session=session, storage=storage, settings=settings
        )
    if spec.takes_mask:
        # Read back from storage: the refs may be upload ids, whose bytes are only there.
        check_inpaint_inputs(
            spec, storage.get(key), storage.get(mask_key) if mask_key is not None else None
        )
    # 3. the row: the queue of record
    job = Job(
        team_id=team.id,
        model=spec.alias,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        params=params.model_dump(),
        source_key=key,
        mask_key=mask_key,
        meta=body.metadata,
        webhook_url=webhook_url,
    )
    session.add(job)
    session.flush()
    nudge(session)
    return job
