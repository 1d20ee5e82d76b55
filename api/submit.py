"""Create jobs. The database commit is the promise; the dispatcher hands jobs to the broker.

In two steps (see api/sources.py): ``check_job`` proves the request acceptable (knobs,
sources fetched and decoded, an inpaint mask checked) holding no database connection and
writing nothing; the route then stores the sources, and ``add_job`` adds the row in a
short transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.deps import release_connection
from api.fetch_slots import FetchSlots
from api.params import check_inpaint_inputs, model_spec, resolve_params
from api.sources import SourceSpool, check_sources, check_webhook_url, upload_keys
from shared.dispatch import nudge
from shared.models import Job, Team
from shared.registry import ModelSpec
from shared.schemas import JobCreate, RenderParams
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedJob:
    """A job request that nothing can refuse any more; its sources wait in the spool."""

    spec: ModelSpec
    params: RenderParams
    webhook_url: str | None
    source_key: str
    mask_key: str | None


def check_job(
    session: Session,
    team: Team,
    body: JobCreate,
    *,
    registry: dict[str, ModelSpec],
    storage: Storage,
    settings: Settings,
    slots: FetchSlots,
    spool: SourceSpool,
) -> CheckedJob:
    """Validate ``body`` fully, its images included; writes nothing (4xx naming the field)."""
    # 1. cheap checks first, so bad params never cost a fetch
    spec = model_spec(registry, body.model)
    params = resolve_params(spec, body)
    webhook_url = None
    if body.webhook_url is not None:
        webhook_url = check_webhook_url(body.webhook_url, "webhook_url", settings)
    # 2. upload ids in one short read; then the connection goes back before any fetch
    refs = {body.image: "image"}
    if body.mask is not None:
        refs.setdefault(body.mask, "mask")
    uploads = upload_keys(session, team, refs)
    release_connection(session)
    # 3. the source image (and an inpaint mask): fetched and proven decodable, not stored
    keys = check_sources(refs, uploads, spool=spool, slots=slots, settings=settings)
    key = keys[body.image]
    mask_key = keys[body.mask] if body.mask is not None else None
    if spec.takes_mask:
        check_inpaint_inputs(
            spec,
            spool.read(key, storage),
            spool.read(mask_key, storage) if mask_key is not None else None,
        )
    return CheckedJob(spec, params, webhook_url, key, mask_key)


def add_job(
    session: Session,
    team: Team,
    body: JobCreate,
    checked: CheckedJob,
) -> Job:
    """Add the queued job, its sources stored (``SourceSpool.store``); the caller commits."""
    job = Job(
        team_id=team.id,
        model=checked.spec.alias,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        params=checked.params.model_dump(),
        source_key=checked.source_key,
        mask_key=checked.mask_key,
        meta=body.metadata,
        webhook_url=checked.webhook_url,
    )
    session.add(job)
    session.flush()
    nudge(session)
    return job
