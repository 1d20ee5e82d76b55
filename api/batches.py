"""Batches: images x prompts (or as ``pairing`` pairs them, api/pairing.py) x variants jobs
created in one transaction, then followed, canceled and retried. Their manifest and archive
stream from api/archive.py.

A batch's jobs are checked by the job path itself (api/submit.py ``check_jobs``, one
source per image), then inserted in one COPY. The api never talks to the broker
for batches: it commits queued jobs and nudges the dispatcher (shared/dispatch.py), which
hands them to Redis in compatible groups.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from api import pairing
from api.fetch_slots import FetchSlots
from api.metrics import count_inserted_jobs
from api.owned import owned_row
from api.pagination import decode_cursor, encode_cursor, newest_first_page
from api.sources import SourceSpool
from api.submit import CheckedJobs, SourceRefs, check_jobs
from shared.bulk import Cells, JsonText, cells, copy_text, insert_rows
from shared.dispatch import nudge
from shared.errors import InvalidRequest
from shared.job_events import log_batch_created
from shared.jobs import JobStatus, cancel_queued_of_batch, retry_failed_of_batch
from shared.models import Batch, Job, Team, utcnow
from shared.names import first_collision, is_portable
from shared.registry import ModelSpec
from shared.review_status import ReviewState
from shared.schemas import (
    MAX_BATCH_JOBS,
    REVIEW_THRESHOLDS,
    BatchCounts,
    BatchCreate,
    BatchEstimate,
    BatchImage,
    BatchPrompt,
    BatchPublic,
    ReviewCounts,
)
from shared.settings import Settings
from shared.storage import Storage
from shared.throughput import batch_eta, observed, queued_ahead

# A batch's job rows, as create_batch builds them: the batch's cells, the prompt's, the
# image's, the job's own. The id is left to the database (migration 0014).
JOB_COLUMNS = (
    *("team_id", "batch_id", "model", "status", "attempts", "created_at", "priority"),
    *("prompt", "negative_prompt", "prompt_name"),
    *("source_key", "mask_key", "sku"),
    *("params", "variant"),
)
# A batch its team deleted reads as gone while what is left of it is removed.
NOT_DELETED = Batch.deleting_at.is_(None)
# Derived seeds keep to 53 bits so JavaScript clients read them exactly (Number is a double).
SEED_BITS = 53


# --- 1. creating a batch -------------------------------------------------------------------


def derive_seed(batch_seed: int, sku: str, prompt_name: str, variant: int) -> int:
    """The seed of one job: SHA-256 of the batch seed and the job's names, top 53 bits.

    Deterministic, so the same batch seed reproduces every image. Derived from the names
    (unique within a batch), not list positions, so reordering images or prompts, or
    re-submitting a subset with the same seed, gives each job the seed it had before.
    """
    material = json.dumps(["imgfarm-batch-seed-v1", batch_seed, sku, prompt_name, variant])
    return _top_bits(material)


def seed_deriver(batch_seed: int) -> Callable[[str, str, int], int]:
    """``derive_seed`` for one batch's jobs: the same material (json.dumps of that list,
    spelled out with its ", " separators), each sku and prompt name encoded once rather than
    once per job."""
    quote = functools.cache(json.dumps)
    head = f'["imgfarm-batch-seed-v1", {int(batch_seed)}, '

    def seed(sku: str, prompt_name: str, variant: int) -> int:
        return _top_bits(f"{head}{quote(sku)}, {quote(prompt_name)}, {int(variant)}]")

    return seed


def _top_bits(material: str) -> int:
    digest = hashlib.sha256(material.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def _with_seed(encoded: str, seed: int) -> JsonText:
    # A job's params are the batch's (JSON-encoded once, ``encoded``) plus its own seed.
    return JsonText(f"{_seed_prefix(encoded)}{seed}}}")


def _seed_prefix(encoded: str) -> str:
    return '{"seed": ' if encoded == "{}" else f'{encoded[:-1]}, "seed": '


def own_cells(encoded: str) -> Callable[[int, int], Cells]:
    """A job's own cells, (params with its seed, variant), for a batch whose params are
    ``encoded``: the batch's part escaped for COPY once; digits need no escaping."""
    prefix = _seed_prefix(encoded)
    escaped = copy_text(prefix)

    def own(seed: int, variant: int) -> Cells:
        return Cells((JsonText(f"{prefix}{seed}}}"), variant), f"{escaped}{seed}}}\t{variant}")

    return own


def _negative(body: BatchCreate, prompt: BatchPrompt) -> str | None:
    # A prompt's own negative prompt, else the batch's.
    return body.negative_prompt if prompt.negative_prompt is None else prompt.negative_prompt


def check_job_count(body: BatchCreate) -> None:
    """Refuse a batch larger than the limit (413), naming its pairing's factors."""
    if body.job_count > MAX_BATCH_JOBS:
        factors, product = pairing.arithmetic(body)
        raise InvalidRequest(
            factors,
            f"{product}; a batch holds at most {MAX_BATCH_JOBS:,} jobs: split it into "
            "several batches",
            status_code=413,
        )


def _slug(text: str, limit: int = 60) -> str:
    """Lowercase ASCII words of ``text`` joined by '-'; '' when none is left or the slug
    is not a portable file name (a prompt "Con" would name the Windows device CON)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower())[:limit].strip("-")
    return slug if is_portable(slug) else ""


def image_names(images: Sequence[BatchImage]) -> list[str]:
    """Each image's sku (given, or ``image-NNN``); they must be distinct within the batch."""
    width = len(str(len(images)))
    names = [img.sku or f"image-{i + 1:0{width}d}" for i, img in enumerate(images)]
    _check_distinct(names, "images", "sku")
    return names


def prompt_names(prompts: Sequence[BatchPrompt]) -> list[str]:
    """Each prompt's name (given, or a slug of its text); distinct within the batch."""
    names = [p.name or _slug(p.prompt) or f"prompt-{i + 1}" for i, p in enumerate(prompts)]
    _check_distinct(names, "prompts", "name")
    return names


def _check_distinct(names: list[str], field: str, attr: str) -> None:
    # Names become folders of the archive and of the CLI's download tree, which macOS and
    # Windows compare ignoring case and Unicode normalisation: SKU-A and sku-a would be one
    # folder there, the second overwriting the first.
    collision = first_collision(names)
    if collision is None:
        return
    first, later = collision
    if names[first] == names[later]:
        message = f"{names[later]!r} is already the {attr} of {field}[{first}]"
    else:
        message = (
            f"{names[later]!r} and {names[first]!r}, the {attr} of {field}[{first}], are one "
            "folder on macOS and Windows (they differ only by case or Unicode normalisation)"
        )
    raise InvalidRequest(f"{field}[{later}].{attr}", f"{message}; give each a distinct {attr}")


def image_sources(images: Sequence[BatchImage]) -> list[SourceRefs]:
    """Each image's source and mask, named as the batch spells them (``images[3].mask``)."""
    return [SourceRefs(img.image, img.mask, f"images[{i}].") for i, img in enumerate(images)]


@dataclass(frozen=True)
class CheckedBatch:
    """A batch request that nothing can refuse any more; its sources wait in the spool."""

    jobs: CheckedJobs  # one entry per image; params.seed is the batch seed
    skus: list[str]
    names: list[str]


def check_batch(
    session: Session,
    team: Team,
    body: BatchCreate,
    *,
    registry: dict[str, ModelSpec],
    storage: Storage,
    settings: Settings,
    slots: FetchSlots,
    spool: SourceSpool,
) -> CheckedBatch:
    """Validate ``body`` fully, every image included; writes nothing (4xx naming the field)."""
    # 1. the batch's own cheap checks: a bad pairing, an oversized grid or clashing names
    # cost no fetch
    pairing.check_pairing(body)
    check_job_count(body)
    skus = image_names(body.images)
    names = prompt_names(body.prompts)
    # 2. then each image's job exactly as POST /v1/jobs checks one: knobs, source, mask
    jobs = check_jobs(
        session,
        team,
        body,
        image_sources(body.images),
        registry=registry,
        storage=storage,
        settings=settings,
        slots=slots,
        spool=spool,
        batch_jobs=body.job_count,
    )
    return CheckedBatch(jobs, skus, names)


def create_batch(session: Session, team: Team, body: BatchCreate, checked: CheckedBatch) -> Batch:
    """Insert the checked batch and all its jobs, its sources stored (the caller commits)."""
    spec, batch_seed = checked.jobs.spec, checked.jobs.params.seed
    params = checked.jobs.params.model_dump(exclude={"seed"})  # seeds are per job, derived
    review = None if body.review is None else body.review.model_dump(exclude_none=True)
    if review:  # each job carries them to the worker, which then needs no batch lookup
        params[REVIEW_THRESHOLDS] = review
    # 3. the batch, then every job in one COPY (no per-job round trip)
    now = utcnow()
    batch = Batch(
        id=uuid.uuid4(),
        team_id=team.id,
        model=spec.alias,
        seed=batch_seed,
        params={**params, "pairing": pairing.mode(body)},  # the batch's, not its jobs'
        image_count=len(body.images),
        prompt_count=len(body.prompts),
        variants=body.variants,
        job_count=body.job_count,
        meta=body.metadata,
        review=review or None,
        created_at=now,
        webhook_url=checked.jobs.webhook_url,
        priority=body.priority,
        deadline=body.deadline,
    )
    session.add(batch)
    session.flush()
    seed, own = seed_deriver(batch_seed), own_cells(json.dumps(params))
    # Each job is its batch's cells, its prompt's, its image's and its own (shared/bulk.py).
    head = cells(team.id, batch.id, spec.alias, JobStatus.QUEUED.value, 0, now, body.priority)
    images = [
        (sku, cells(sources.source_key, sources.mask_key, sku))
        for sku, sources in zip(checked.skus, checked.jobs.sources, strict=True)
    ]
    prompts = [
        (name, cells(prompt.prompt, _negative(body, prompt), name))
        for prompt, name in zip(body.prompts, checked.names, strict=True)
    ]
    rows = [
        (head, prompt, image, own(seed(sku, name, variant), variant))
        for (sku, image), (name, prompt), variant in pairing.paired(body, images, prompts)
    ]
    insert_rows(session, Job, JOB_COLUMNS, rows)  # one COPY, not 10,000 INSERTs
    count_inserted_jobs(session, spec.alias, team.id, len(rows))  # the ORM never saw them
    log_batch_created(session, batch.id)  # the live streams' log, one statement
    # 4. wake the dispatcher; the NOTIFY is delivered at commit, with the rows visible
    nudge(session, spec.alias)
    return batch


# --- 2. following a batch ------------------------------------------------------------------


@dataclass
class StatusStats:
    """One status's share of a batch, from the GROUP BY."""

    count: int
    first_started: datetime | None
    last_finished: datetime | None


def get_batch(session: Session, team: Team, batch_id: uuid.UUID) -> Batch:
    """The team's batch, or NotFound (another team's batch, or one being deleted, looks the
    same as none)."""
    return owned_row(session, Batch, batch_id, team, "batch", NOT_DELETED)


def outside_deleted_batches() -> ColumnElement[bool]:
    """Jobs not in a batch being deleted: those read as gone with it (an anti-join on the
    partial ix_batches_deleting, empty but while a deletion runs)."""
    deleting = select(Batch.id).where(Batch.id == Job.batch_id, Batch.deleting_at.is_not(None))
    return ~deleting.exists()


def owned_job(session: Session, job_id: uuid.UUID, team: Team) -> Job:
    """``team``'s job ``job_id``, else NotFound; a job of a batch being deleted is gone with
    it, as the batch is, though the dispatcher's sweep removes its row a moment later."""
    return owned_row(session, Job, job_id, team, "job", outside_deleted_batches())


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def batch_stats(
    session: Session, batch_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, StatusStats]]:
    """Counts and timings by status for each batch: one GROUP BY on (batch_id, status)."""
    rows = session.execute(
        select(
            Job.batch_id,
            Job.status,
            func.count(),
            func.min(Job.started_at),
            func.max(Job.finished_at),
        )
        .where(Job.batch_id.in_(batch_ids))
        .group_by(Job.batch_id, Job.status)
    ).tuples()
    stats: dict[uuid.UUID, dict[str, StatusStats]] = {b: {} for b in batch_ids}
    for batch_id, status, count, started, finished in rows:
        assert batch_id is not None
        stats[batch_id][status] = StatusStats(count, _aware(started), _aware(finished))
    return stats


def _batch_status(counts: BatchCounts, started: bool) -> str:
    if counts.queued or counts.running:
        return "running" if started or counts.running else "queued"
    if counts.failed:
        return "failed"
    if counts.canceled:
        return "canceled"
    return "succeeded"


def batch_public(
    batch: Batch,
    stats: dict[str, StatusStats],
    now: datetime | None = None,
    reviews: dict[str, int] | None = None,
) -> BatchPublic:
    """What ``GET /v1/batches/{id}`` answers: counts, progress, timings and an ETA.

    Throughput is the average since the first job started: finished renders (succeeded or
    failed; canceled jobs cost no GPU time) over elapsed time. ETA = jobs left / throughput.
    """
    now = now or utcnow()
    counts = BatchCounts(**{status: s.count for status, s in stats.items()})
    started = min((s.first_started for s in stats.values() if s.first_started), default=None)
    active = counts.queued + counts.running
    done = counts.succeeded + counts.failed
    final = done + counts.canceled
    finished = None
    if not active:
        finished = max((s.last_finished for s in stats.values() if s.last_finished), default=None)
    # While jobs are left the window runs to now (a stall lowers the rate); once all are
    # final it ends at the last render.
    end = now
    if not active:
        rendered = [stats[s].last_finished for s in ("succeeded", "failed") if s in stats]
        end = max((t for t in rendered if t is not None), default=now)
    jobs_per_second = eta = None
    if started is not None and done and (end - started).total_seconds() > 0:
        jobs_per_second = done / (end - started).total_seconds()
        eta = active / jobs_per_second if active else None
    return BatchPublic(
        id=batch.id,
        status=_batch_status(counts, started is not None),
        model=batch.model,
        job_count=batch.job_count,
        counts=counts,
        review_counts=ReviewCounts(**(reviews or {})),
        progress=round(final / batch.job_count, 4) if batch.job_count else 1.0,
        seed=batch.seed,
        params={k: v for k, v in batch.params.items() if k != "pairing"},
        image_count=batch.image_count,
        prompt_count=batch.prompt_count,
        variants=batch.variants,
        pairing=batch.params.get("pairing", "cross"),  # batches before pairing crossed
        metadata=batch.meta,
        created_at=_aware(batch.created_at) or batch.created_at,
        started_at=started,
        finished_at=finished,
        canceled_at=_aware(batch.canceled_at),
        jobs_per_second=None if jobs_per_second is None else round(jobs_per_second, 4),
        eta_seconds=None if eta is None else round(eta, 1),
        priority=batch.priority,
        deadline=_aware(batch.deadline),
    )


def with_schedule(
    session: Session, batch: Batch, stats: dict[str, StatusStats], public: BatchPublic
) -> BatchPublic:
    """``public`` with ``eta`` and ``on_track``: the batch's jobs left behind its model's
    queue at the model's observed pace, against its deadline (shared/throughput.py); a
    finished batch is on track if it finished by its deadline."""
    remaining = sum(stats[s].count for s in ("queued", "running") if s in stats)
    if not remaining:  # done: whether it finished by its deadline
        done, deadline = public.finished_at, public.deadline
        met = None if deadline is None or done is None else done <= deadline
        return public.model_copy(update={"on_track": met})
    schedule = batch_eta(
        session, batch.model, batch.id, batch.created_at, remaining, batch.deadline
    )
    return public.model_copy(update={"eta": schedule.eta, "on_track": schedule.on_track})


def estimate_batch(session: Session, model: str, job_count: int) -> BatchEstimate:
    """What ``job_count`` more jobs of ``model`` would cost and when the last would finish,
    behind its whole queue, at its observed pace (shared/throughput.py)."""
    pace = observed(session, model)
    if pace is None:
        return BatchEstimate(job_count=job_count, estimated_gpu_seconds=None, eta_seconds=None)
    return BatchEstimate(
        job_count=job_count,
        estimated_gpu_seconds=round(job_count * pace.gpu_seconds_per_job, 1),
        eta_seconds=round(pace.seconds_for(queued_ahead(session, model) + job_count), 1),
    )


def list_batches(
    session: Session, team: Team, cursor: str | None, limit: int
) -> tuple[list[Batch], str | None]:
    """The team's batches, newest first, one page after ``cursor``."""
    query = (
        select(Batch)
        .where(Batch.team_id == team.id, NOT_DELETED)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(limit + 1)
    )
    return newest_first_page(session, query, Batch, cursor, limit)


def list_jobs(
    session: Session,
    batch: Batch,
    status: JobStatus | None,
    cursor: str | None,
    limit: int,
    review: Sequence[ReviewState] | None = None,
) -> tuple[list[Job], str | None]:
    """One page of the batch's jobs (optionally of one status, of some review states),
    in id order."""
    query = select(Job).where(Job.batch_id == batch.id).order_by(Job.id).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status.value)
    if review is not None:
        query = query.where(Job.review.in_([r.value for r in review]))
    if cursor is not None:
        (last_id,) = decode_cursor(cursor, 1)
        try:
            query = query.where(Job.id > uuid.UUID(last_id))
        except ValueError as e:
            raise InvalidRequest("cursor", "is not a cursor from a previous page") from e
    jobs = list(session.scalars(query))
    if len(jobs) <= limit:
        return jobs, None
    return jobs[:limit], encode_cursor(jobs[limit - 1].id)


# --- 3. cancel and retry -------------------------------------------------------------------


def cancel_batch(session: Session, batch: Batch) -> int:
    """queued → canceled for the whole batch in one conditional UPDATE (caller commits).

    Running jobs may finish (their result is kept); jobs already handed to Redis are
    skipped by the worker's claim (``WHERE status='queued'``), so they never render. The
    job.canceled events (and batch.completed if nothing is left running) are written with
    the cancel by shared/jobs.py.
    """
    if batch.canceled_at is None:
        batch.canceled_at = utcnow()
    return cancel_queued_of_batch(session, batch.id)


def mark_deleting(session: Session, batch: Batch) -> None:
    """Mark the batch deleted (caller commits): only the first request's mark counts."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.deleting_at.is_(None))
        .values(deleting_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def retry_batch(session: Session, batch: Batch) -> int:
    """failed → queued for the batch's failed jobs only, then nudge (caller commits).

    The transition is shared/jobs.py's (TRANSITIONS allows failed → queued for this retry
    only: a job's own failure is final for the worker): one conditional UPDATE, a clean
    round (error, timings and attempts reset), the batch reopened for batch.completed.
    """
    retried = retry_failed_of_batch(session, batch.id)
    if retried:
        nudge(session, batch.model)
    return retried
