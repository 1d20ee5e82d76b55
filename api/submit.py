"""Create jobs: the one path by which ``POST /v1/jobs`` and ``POST /v1/batches`` check them.

``check_jobs`` turns (model, knobs, each job's source and mask) into jobs that nothing can
refuse any more, in the order that keeps intake cheap and safe (see api/sources.py): knobs
first, so a bad one never costs a fetch; then the sources, fetched and decoded holding no
database connection and writing nothing; then the checks that need their pixels (an
inpaint mask). A job is one source; a batch is one source per image, sharing the knobs.
The route then stores the sources and adds the rows in a short transaction (``add_job``
here, a bulk INSERT in api/batches.py). The database commit is the promise; the
dispatcher hands jobs to the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.adapters import resolve_adapters
from api.deps import release_connection
from api.fetch_slots import FetchSlots
from api.params import (
    check_commercial_use,
    check_inpaint_inputs,
    check_mask_given,
    check_preset_cutout,
    check_presets,
    model_spec,
    resolve_cutout,
    resolve_params,
)
from api.quotas import check_quotas
from api.sources import SourceSpool, check_sources, check_webhook_url, upload_keys
from shared.dispatch import nudge
from shared.job_events import log_events
from shared.models import Job, Team
from shared.presets import load_presets
from shared.registry import ModelSpec
from shared.schemas import MASK_AUTO, JobCreate, RenderKnobs, RenderParams
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceRefs:
    """One job's images as the client gave them, and where they sit in its request."""

    image: str
    mask: str | None = None
    at: str = ""  # field prefix: "" in POST /v1/jobs, "images[3]." in a batch

    def field(self, name: str) -> str:
        return f"{self.at}{name}"


@dataclass(frozen=True)
class CheckedSources:
    """Where one job's checked source (and mask) will be stored; they wait in the spool."""

    source_key: str
    mask_key: str | None


@dataclass(frozen=True)
class CheckedJobs:
    """Jobs that nothing can refuse any more: their model, params (a job's seed; a batch's
    seed, from which each of its jobs' is derived) and sources, in the order given."""

    spec: ModelSpec
    params: RenderParams
    webhook_url: str | None
    sources: list[CheckedSources]


def check_jobs(
    session: Session,
    team: Team,
    knobs: RenderKnobs,
    refs: Sequence[SourceRefs],
    *,
    registry: dict[str, ModelSpec],
    storage: Storage,
    settings: Settings,
    slots: FetchSlots,
    spool: SourceSpool,
    batch_jobs: int | None = None,
) -> CheckedJobs:
    """Validate jobs sharing ``knobs``, one per entry of ``refs``, their images included;
    writes nothing (4xx naming the field, prefixed as ``refs`` say). ``batch_jobs``: the
    job count of the batch ``refs`` are the images of (None: one job per ref)."""
    # 1. cheap checks first, so bad knobs never cost a fetch
    spec = model_spec(registry, knobs.model)
    check_commercial_use(spec, knobs)
    params = resolve_params(spec, knobs)
    # each named adapter pinned to the digest of the team's file now (api/adapters.py)
    params.adapters = resolve_adapters(session, team, spec, knobs.adapters)
    for ref in refs:
        check_mask_given(spec, ref.mask, ref.field("mask"))
    params.cutout = resolve_cutout(spec, knobs.cutout, [(r.mask, r.field("mask")) for r in refs])
    webhook_url = None
    if knobs.webhook_url is not None:
        webhook_url = check_webhook_url(knobs.webhook_url, "webhook_url", settings)
    presets = check_presets(load_presets(settings.models), knobs.preset)
    # the team's limits, before any fetch; passing spends its rate tokens (api/quotas.py)
    job_count = len(refs) if batch_jobs is None else batch_jobs
    check_quotas(session, team, job_count, is_batch=batch_jobs is not None)
    # 2. upload ids in one short read; then the connection goes back before any fetch
    fields: dict[str, str] = {}  # each distinct reference, fetched once, named where first seen
    for ref in refs:
        fields.setdefault(ref.image, ref.field("image"))
        if ref.mask is not None and ref.mask != MASK_AUTO:  # "auto": the worker finds it
            fields.setdefault(ref.mask, ref.field("mask"))
    uploads = upload_keys(session, team, fields)
    release_connection(session)
    # 3. every source (and mask): fetched and proven decodable, not stored
    keys = check_sources(fields, uploads, spool=spool, slots=slots, settings=settings)
    checked = [
        CheckedSources(keys[ref.image], None if ref.mask in (None, MASK_AUTO) else keys[ref.mask])
        for ref in refs
    ]
    # 4. what needs the pixels: an inpaint job must leave something to repaint (a mask
    # "auto" is the worker's to find: it fails the job if it finds no product)
    if spec.takes_mask and params.cutout is None:
        for ref, sources in zip(refs, checked, strict=True):
            check_inpaint_inputs(
                spec,
                spool.read(sources.source_key, storage),
                None if sources.mask_key is None else spool.read(sources.mask_key, storage),
                ref.field("mask"),
            )
    # 5. a preset made of the product alone needs a cut-out: an inpaint job keeps one, other
    # kinds take it from a transparent source
    if not spec.takes_mask and any(p.needs_cutout for p in presets):
        for ref, sources in zip(refs, checked, strict=True):
            check_preset_cutout(
                presets, spool.read(sources.source_key, storage), ref.field("image")
            )
    return CheckedJobs(spec, params, webhook_url, checked)


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
) -> CheckedJobs:
    """Validate ``body`` fully, its images included; writes nothing (4xx naming the field)."""
    return check_jobs(
        session,
        team,
        body,
        [SourceRefs(body.image, body.mask)],
        registry=registry,
        storage=storage,
        settings=settings,
        slots=slots,
        spool=spool,
    )


def add_job(
    session: Session,
    team: Team,
    body: JobCreate,
    checked: CheckedJobs,
) -> Job:
    """Add the queued job, its sources stored (``SourceSpool.store``); the caller commits."""
    (sources,) = checked.sources
    job = Job(
        team_id=team.id,
        model=checked.spec.alias,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        params=checked.params.model_dump(),
        source_key=sources.source_key,
        mask_key=sources.mask_key,
        meta=body.metadata,
        webhook_url=checked.webhook_url,
        priority=body.priority,
    )
    session.add(job)
    session.flush()
    log_events(session, [job.id], "job.queued")
    nudge(session, job.model)
    return job
