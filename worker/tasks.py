"""The render task's orchestration: one batch of jobs from claim to recorded outcome.

``run_render`` runs a batch in three stages: prepare (claim, fetch and decode the sources,
in parallel on the io pool), render (one pipeline call per compatible group, on the device
lane) and finish (encode, upload and record the outputs, in parallel on the io pool). The
worker runs ``IMGFARM_WORKER_PIPELINE_DEPTH`` batches at once, so while one renders, the
others prepare or finish and the GPU does not wait for the CPU (worker/device.py).

A failed pipeline call is split only where splitting can help (``render_group``); a failed
job is handed back or failed by worker/failures.py's decision, written in its own
transaction. The steps themselves are worker/render.py's; the Celery binding is the small
``register_tasks`` at the end.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task
from PIL import Image
from sqlalchemy import bindparam, select
from sqlalchemy.exc import OperationalError

from shared.batching import compatibility_key
from shared.broker import RENDER_TASK
from shared.db import session_scope
from shared.errors import ImgfarmError
from shared.jobs import (
    JobStatus,
    claim_jobs_loaded,
    mark_failed_bulk,
    mark_succeeded_bulk,
    requeue,
)
from shared.models import Job, utcnow
from shared.presets import load_presets
from shared.usage import add_usage
from worker.context import WorkerContext
from worker.failures import Failure, decide_failure
from worker.render import (
    Rendered,
    RenderItem,
    RenderResult,
    discard_outputs,
    prepare,
    render,
    store_output,
)
from worker.retry import db_retry, is_out_of_memory

log = logging.getLogger(__name__)


class RenderFailed(ImgfarmError):
    """Some jobs of the batch failed for an unexpected reason (their rows say why).

    ``summary`` is the batch's ``BatchSummary.as_dict()``: the worker's metrics count its
    real outcomes from it (worker/metrics.py), not one error per job of the message.
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class BatchSummary:
    """What the render task returns: read by metrics and Flower, never by job state."""

    model: str
    batch_size: int = 0
    render_seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    # Per job, from its creation to the start of its first pipeline call (not its claim:
    # a claimed job may still wait for the device lane behind up to depth - 1 batches).
    queue_wait_seconds: dict[uuid.UUID, float] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "render_seconds": round(self.render_seconds, 4),
            "outcomes": dict(self.outcomes),
            "queue_wait_seconds": [round(s, 3) for s in self.queue_wait_seconds.values()],
        }

    def render_started(self, jobs: list[Job]) -> None:
        """Note each job's queue wait, once: a split batch's retry is not a new wait."""
        now = utcnow()
        for job in jobs:
            self.queue_wait_seconds.setdefault(job.id, (now - job.created_at).total_seconds())


@db_retry
def claim_jobs(ctx: WorkerContext, job_ids: list[uuid.UUID]) -> list[Job]:
    """Claim what is still claimable, in one transaction; the rest is someone else's."""
    with session_scope(ctx.session_factory) as session:
        # One statement whatever their number: the claim, its log and the dispatcher's nudge.
        return claim_jobs_loaded(session, job_ids, ctx.name, ctx.settings.lease_seconds)


# Built once: it runs for every pipeline call.
_STATES = select(Job.id, Job.status, Job.worker).where(Job.id.in_(bindparam("ids", expanding=True)))


@db_retry
def job_states(ctx: WorkerContext, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each job's status as this worker sees it: ``running`` only if still running for this
    worker (a job taken back and claimed by another reads ``superseded``)."""
    with session_scope(ctx.session_factory) as session:
        rows = session.execute(_STATES, {"ids": job_ids}).all()
    return {
        job_id: "superseded" if status == JobStatus.RUNNING.value and worker != ctx.name else status
        for job_id, status, worker in rows
    }


@db_retry
def record_successes(ctx: WorkerContext, results: list[RenderResult]) -> set[uuid.UUID]:
    """Record a rendered group's outcomes in one transaction: one UPDATE, one pass of event
    rows for all of them (shared/jobs.py writes both), one commit. Returns the jobs that
    were still ours to finish."""
    with session_scope(ctx.session_factory) as session:
        succeeded = mark_succeeded_bulk(session, [r.success() for r in results])
        # Counted with the success, in its transaction: usage is exactly the jobs succeeded.
        done = set(succeeded)
        add_usage(session, [r for r in results if r.job_id in done])
        return done


def record_failure(ctx: WorkerContext, job: Job, exc: BaseException, summary: BatchSummary) -> None:
    """Fail ``job`` at once or hand it back with backoff (worker/failures.py decides), and
    log and count that once, however many tries the database write takes."""
    failure = decide_failure(exc, job.attempts, ctx.settings.max_attempts, job.batch_id)
    # Logged before the write: if the database stays away, the cause is still on record.
    if failure.unexpected:
        # The row names the class only; the operators get the traceback here.
        summary.unexpected.append(f"{job.id}: {type(exc).__name__}: {exc}")
        log.error("job %s: unexpected error", job.id, exc_info=exc)
    elif failure.retry_in is not None:
        log.warning("job %s: transient error, retry in %.0fs: %s", job.id, failure.retry_in, exc)
    else:
        log.info("job %s failed: %s", job.id, failure.error)
    if write_failure(ctx, job.id, failure):
        summary.outcomes["failed" if failure.retry_in is None else "retried"] += 1
    else:  # canceled, or taken back after a lost lease: another attempt owns it now
        summary.outcomes["canceled" if ctx.in_flight.is_canceled(job.id) else "superseded"] += 1


@db_retry
def write_failure(ctx: WorkerContext, job_id: uuid.UUID, failure: Failure) -> bool:
    """Write the decision in one transaction; False if the job was no longer ours. Run again
    from the top after a transient database error: nothing here but the database."""
    with session_scope(ctx.session_factory) as session:
        if failure.retry_in is not None:
            return requeue(session, job_id, failure.error, failure.retry_in)
        # The job.failed event row commits with the change (shared/jobs.py writes both).
        return bool(mark_failed_bulk(session, [job_id], failure.error))


def render_group(ctx: WorkerContext, items: list[RenderItem], summary: BatchSummary) -> None:
    """Render compatible items in one pipeline call, then finish them. A failed call is
    split only where that can help (``_settle``), so an error that every job hits costs
    two more calls, not one per job and more."""
    error = _try_render(ctx, items, summary)
    if error is not None:
        _settle(ctx, items, error, summary)


def _try_render(
    ctx: WorkerContext, items: list[RenderItem], summary: BatchSummary
) -> Exception | None:
    """One pipeline call for ``items`` and the finish of what it rendered; the call's error."""
    try:
        rendered = ctx.device.run(_render_live, ctx, items, summary)
    except Exception as e:
        return e
    summary.outcomes["canceled"] += len(items) - len(rendered.items)
    if rendered.items:
        finish_group(ctx, rendered, summary)
    return None


def _settle(
    ctx: WorkerContext, items: list[RenderItem], error: Exception, summary: BatchSummary
) -> None:
    """``items`` failed together with ``error``: find out whose failure it is.

    Out of memory: the batch was too large for the device, and its halves, rendered afresh,
    may fit. Anything else is either one job's doing (then one half renders and only the
    other is narrowed down further) or the model's, the device's or the code's (then both
    halves fail as well, and every job takes its half's error: two more calls in all).
    Two bad jobs in opposite halves read as the second case; a rare price for not making a
    broken worker try 2n - 1 calls per batch.
    """
    live = _live(ctx, items)
    summary.outcomes["canceled"] += len(items) - len(live)
    if len(live) <= 1:
        _fail_all(ctx, live, error, summary)
        return
    halves = [live[: len(live) // 2], live[len(live) // 2 :]]
    if is_out_of_memory(error):
        log.warning("batch of %d ran out of memory; rendering it in halves", len(live))
        ctx.device.run(_free_accelerator_memory)
        for half in halves:
            render_group(ctx, half, summary)
        return
    log.warning("batch of %d failed (%s); trying its halves", len(live), type(error).__name__)
    errors = [_try_render(ctx, half, summary) for half in halves]
    systemic = all(e is not None and not is_out_of_memory(e) for e in errors)
    for half, half_error in zip(halves, errors, strict=True):
        if half_error is not None and systemic:
            _fail_all(ctx, half, half_error, summary)
        elif half_error is not None:
            _settle(ctx, half, half_error, summary)


def _fail_all(
    ctx: WorkerContext, items: list[RenderItem], error: Exception, summary: BatchSummary
) -> None:
    live = _live(ctx, items)
    summary.outcomes["canceled"] += len(items) - len(live)
    for item in live:
        record_failure(ctx, item.job, error, summary)


def _live(ctx: WorkerContext, items: list[RenderItem]) -> list[RenderItem]:
    return [i for i in items if not ctx.in_flight.is_canceled(i.job.id)]


def _render_live(ctx: WorkerContext, items: list[RenderItem], summary: BatchSummary) -> Rendered:
    """On the device lane: render the items not canceled while this task waited for it
    (they are not worth a pipeline slot), stopping early if all of them get canceled."""
    live = _live(ctx, items)
    if not live:
        return Rendered(items=[], images=[], batch_size=0, seconds=0.0)
    summary.render_started([i.job for i in live])
    ids = [i.job.id for i in live]
    presets = load_presets(ctx.settings.models)  # read once per process (cached)
    return render(
        ctx.model, live, should_stop=lambda: ctx.in_flight.all_canceled(ids), presets=presets
    )


def finish_group(ctx: WorkerContext, rendered: Rendered, summary: BatchSummary) -> None:
    """Encode, store and record one pipeline call's outputs, each upload on its own io
    thread. A failed upload fails (or retries) only its own job: the render is not redone
    for the others."""
    summary.batch_size = max(summary.batch_size, len(rendered.items))
    summary.render_seconds = max(summary.render_seconds, rendered.seconds)
    # Canceled (or taken back) while rendering, before the heartbeat noticed: not stored,
    # so a canceled job leaves no output behind. One query per pipeline call.
    states = job_states(ctx, [i.job.id for i in rendered.items])
    pending = []
    for i, (item, image) in enumerate(zip(rendered.items, rendered.images, strict=True)):
        state = states.get(item.job.id, "superseded")
        canceled = state == JobStatus.CANCELED.value or ctx.in_flight.is_canceled(item.job.id)
        if state == JobStatus.RUNNING.value and not canceled:
            pending.append((item, _store_later(ctx, rendered, item, image, rendered.detail(i))))
        else:  # canceled, or taken back after a lost lease: another attempt owns it now
            summary.outcomes["canceled" if canceled else "superseded"] += 1
    results: list[RenderResult] = []
    for item, future in pending:
        try:
            results.append(future.result())
        except Exception as e:
            record_failure(ctx, item.job, e, summary)
    if not results:
        return
    succeeded = record_successes(ctx, results)
    for result in results:
        summary.outcomes["succeeded" if result.job_id in succeeded else "superseded"] += 1
    # Canceled during the upload (after the check above): the conditional UPDATE refused
    # them, so what was stored goes. A superseded job's key is another attempt's now: kept.
    refused = [r for r in results if r.job_id not in succeeded]
    if refused:
        latest = job_states(ctx, [r.job_id for r in refused])
        gone = [r for r in refused if latest.get(r.job_id) == JobStatus.CANCELED.value]
        discard_outputs(ctx.storage, gone)


def _store_later(
    ctx: WorkerContext,
    rendered: Rendered,
    item: RenderItem,
    image: Image.Image,
    detail: Image.Image | None,
) -> Future[RenderResult]:
    return ctx.io.submit(
        store_output,
        ctx.model,
        ctx.storage,
        item,
        image,
        worker=ctx.name,
        batch_size=rendered.batch_size,
        render_seconds=rendered.seconds,
        png_compress_level=ctx.settings.worker_png_compress_level,
        credentials=ctx.credentials,
        presets=load_presets(ctx.settings.models),  # read once per process (cached)
        detail=detail,
        cpu=ctx.cpu,
    )


def run_render(ctx: WorkerContext, job_ids: list[uuid.UUID]) -> BatchSummary:
    """Claim, prepare, render and record a batch. Idempotent: jobs already claimed,
    finished or canceled are skipped, so a message delivered twice renders once."""
    summary = BatchSummary(model=ctx.model.spec.alias)
    # Held from before the claim, so the reservation note (worker/heartbeat.py) skips a
    # message whose task has started instead of racing its claim for the same rows.
    ctx.in_flight.start(job_ids)
    jobs: list[Job] = []
    try:
        jobs = claim_jobs(ctx, job_ids)
    finally:  # what was not claimed (another's, finished, or the claim failed) is not held
        ids = [j.id for j in jobs]
        ctx.in_flight.finish(list(set(job_ids) - set(ids)))
    summary.outcomes["skipped"] = len(job_ids) - len(jobs)
    if not jobs:
        return summary
    try:
        _render_claimed(ctx, jobs, summary)
    except Exception as e:
        # A bug here must not strand claimed jobs until their lease runs out: fail what is
        # still ours (the conditional UPDATE leaves finished or handed-back jobs alone).
        for job in jobs:
            record_failure(ctx, job, e, summary)
        raise
    finally:
        ctx.in_flight.finish(ids)
    return summary


def _render_claimed(ctx: WorkerContext, jobs: list[Job], summary: BatchSummary) -> None:
    """Prepare each job on its own (side by side), then render compatible ones together."""
    ready: dict[tuple[Any, ...], list[RenderItem]] = {}
    pending = [
        (job, ctx.io.submit(prepare, ctx.model, ctx.storage, job, ctx.prepared)) for job in jobs
    ]
    for job, future in pending:
        try:
            item = future.result()
        except Exception as e:  # one unreadable source must not sink the batch
            record_failure(ctx, job, e, summary)
            continue
        ready.setdefault(compatibility_key(job.params), []).append(item)
    max_batch = ctx.model.spec.max_batch
    for items in ready.values():
        for start in range(0, len(items), max_batch):
            render_group(ctx, items[start : start + max_batch], summary)


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def register_tasks(app: Celery, ctx: WorkerContext) -> None:
    """Bind the render task to this process's warm model (no module-level globals)."""

    @app.task(name=RENDER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def render(self: Task, job_ids: list[str]) -> dict[str, Any]:
        try:
            summary = run_render(ctx, [uuid.UUID(j) for j in job_ids])
        except OperationalError as e:
            # The database is away (restart, failover): put the message back for later.
            raise self.retry(exc=e, countdown=2, max_retries=30) from e
        if summary.unexpected:
            # Celery marks the task failed; the summary rides along for the metrics.
            raise RenderFailed("; ".join(summary.unexpected), summary.as_dict())
        return summary.as_dict()
