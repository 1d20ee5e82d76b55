"""Thin Celery tasks: claim the job, call render, record the outcome."""

from __future__ import annotations

import logging
import uuid

from celery import Celery, Task

from shared.broker import RENDER_TASK
from shared.db import session_scope
from shared.jobs import claim_job, mark_failed, mark_succeeded, requeue
from shared.models import Job
from worker.context import WorkerContext
from worker.render import render_job
from worker.retry import PERMANENT, backoff_seconds, is_transient

log = logging.getLogger(__name__)


def run_render(ctx: WorkerContext, job_id: uuid.UUID, worker: str) -> str:
    """Render one job if we can claim it. Returns its final or handed-back status.

    Idempotent: a job already claimed, finished or canceled is left alone, so a message
    delivered twice renders once.
    """
    factory = ctx.session_factory
    with session_scope(factory) as session:
        if not claim_job(session, job_id, worker, ctx.settings.lease_seconds):
            log.info("job %s not claimable (taken, finished or canceled); skipping", job_id)
            return "skipped"
        job = session.get(Job, job_id)
        assert job is not None
    try:
        result = render_job(ctx.model, ctx.storage, job, worker)
    except PERMANENT as e:
        with session_scope(factory) as session:
            mark_failed(session, job_id, f"{type(e).__name__}: {e}")
        log.warning("job %s failed permanently: %s", job_id, e)
        return "failed"
    except Exception as e:
        if is_transient(e) and job.attempts < ctx.settings.max_attempts:
            with session_scope(factory) as session:
                requeue(session, job_id, f"attempt {job.attempts}: {type(e).__name__}: {e}")
            log.warning("job %s hit a transient error, will retry: %s", job_id, e)
            return "retry"
        with session_scope(factory) as session:
            mark_failed(session, job_id, f"{type(e).__name__}: {e} (after {job.attempts} attempts)")
        raise
    with session_scope(factory) as session:
        if not mark_succeeded(session, job_id, result.outputs, result.provenance):
            # Canceled or taken back while we rendered; the outputs are harmless
            # (deterministic keys) but the job's state is not ours to change.
            log.info("job %s changed state while rendering; result not recorded", job_id)
            return "superseded"
    log.info("job %s succeeded in %.2fs", job_id, result.seconds)
    return "succeeded"


def register_tasks(app: Celery, ctx: WorkerContext) -> None:
    """Bind the render task to this process's warm model (no module-level globals)."""

    @app.task(name=RENDER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def render(self: Task, job_id: str) -> str:
        worker = self.request.hostname or "worker"
        outcome = run_render(ctx, uuid.UUID(job_id), worker)
        if outcome == "retry":
            attempt = self.request.retries + 1
            raise self.retry(countdown=backoff_seconds(attempt), max_retries=None)
        return outcome
