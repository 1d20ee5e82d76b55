"""A render that raises, on Postgres with the echo model: how many pipeline calls a failed
batch costs, what the failed jobs' rows say, that a retried write counts once, and what the
worker's metrics see when the task reports unexpected failures."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from shared.broker import RENDER_TASK
from shared.db import session_scope
from shared.errors import PermanentRenderError, TransientError
from shared.events import JOB_FAILED
from shared.models import Batch, Job, WebhookDelivery
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.teams import ensure_team
from tests.factories import png_bytes
from tests.test_metrics import sample
from worker import tasks
from worker.context import WorkerContext
from worker.metrics import WorkerMetrics
from worker.pipelines import load_model
from worker.render import Rendered, RenderItem
from worker.tasks import BatchSummary, claim_jobs, record_failure, register_tasks, run_render

PARAMS = {
    "strength": 1.0,
    "steps": 1,
    "guidance_scale": 0.0,
    "width": 32,
    "height": 32,
    "output_format": "png",
}
BATCH = 16  # echo's max_batch: one pipeline call for all of them when nothing fails


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    return load_model(BUILTINS["echo"], Settings(data_dir=tmp_path_factory.mktemp("data")))


@pytest.fixture
def ctx(settings, session_factory, echo, tmp_path) -> Iterator[WorkerContext]:
    context = WorkerContext(
        settings=settings,
        model=echo,
        storage=LocalStorage(tmp_path / "objects", "http://test", "secret"),
        session_factory=session_factory,
        name=f"failures-{uuid.uuid4().hex[:6]}",
    )
    yield context
    context.close()


def make_jobs(
    ctx: WorkerContext, n: int, *, in_batch: bool = False, webhook_url: str | None = None
) -> list[uuid.UUID]:
    key = f"sources/{uuid.uuid4()}"
    ctx.storage.put(key, png_bytes(40, 40), "image/png")
    with session_scope(ctx.session_factory) as session:
        team = ensure_team(session, f"failures-{uuid.uuid4().hex[:8]}")
        batch_id = None
        if in_batch:
            batch = Batch(
                team_id=team.id,
                model="echo",
                seed=1,
                params=PARAMS,
                image_count=1,
                prompt_count=1,
                variants=n,
                job_count=n,
            )
            session.add(batch)
            session.flush()
            batch_id = batch.id
        jobs = [
            Job(
                id=uuid.uuid4(),
                team_id=team.id,
                batch_id=batch_id,
                model="echo",
                prompt="p",
                params={**PARAMS, "seed": i},
                source_key=key,
                webhook_url=webhook_url,
            )
            for i in range(n)
        ]
        session.add_all(jobs)
    return [j.id for j in jobs]


def rows(ctx: WorkerContext, ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
    with ctx.session_factory() as session:
        return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}


def counting_render(
    monkeypatch, fails: Callable[[list[RenderItem]], BaseException | None]
) -> list[int]:
    """Replace the task's pipeline call: ``fails(items)`` says what a call raises, if
    anything; returns the batch size of every call made."""
    calls: list[int] = []
    real = tasks.render

    def render(model: Any, items: list[RenderItem], **kwargs: Any) -> Rendered:
        calls.append(len(items))
        error = fails(items)
        if error is not None:
            raise error
        return real(model, items, **kwargs)

    monkeypatch.setattr(tasks, "render", render)
    return calls


# --- splitting a failed batch only where that can help ------------------------------------------


def test_an_error_every_job_hits_fails_the_batch_in_three_calls(ctx, monkeypatch):
    ids = make_jobs(ctx, BATCH)
    calls = counting_render(monkeypatch, lambda items: RuntimeError("CUDA error: launch failure"))
    summary = run_render(ctx, ids)
    assert calls == [16, 8, 8], "the batch, then its two halves: not 31 calls"
    assert summary.outcomes["failed"] == BATCH
    assert {j.status for j in rows(ctx, ids).values()} == {"failed"}


def test_one_jobs_error_is_narrowed_down_and_the_others_render(ctx, monkeypatch):
    ids = make_jobs(ctx, BATCH)
    bad = ids[5]
    calls = counting_render(
        monkeypatch,
        lambda items: OverflowError("boom") if any(i.job.id == bad for i in items) else None,
    )
    summary = run_render(ctx, ids)
    # 16 fails; 8 (bad) fails, 8 renders; 4 (bad) fails, 4 renders; 2 and 2; 1 and 1.
    assert calls == [16, 8, 8, 4, 4, 2, 2, 1, 1]
    assert summary.outcomes["succeeded"] == BATCH - 1 and summary.outcomes["failed"] == 1
    states = {i: j.status for i, j in rows(ctx, ids).items()}
    assert states.pop(bad) == "failed" and set(states.values()) == {"succeeded"}


def test_out_of_memory_renders_in_halves_until_the_batch_fits(ctx, monkeypatch):
    ids = make_jobs(ctx, BATCH)
    calls = counting_render(
        monkeypatch,
        lambda items: torch.OutOfMemoryError("CUDA out of memory") if len(items) > 4 else None,
    )
    summary = run_render(ctx, ids)
    assert calls == [16, 8, 4, 4, 8, 4, 4]
    assert summary.outcomes["succeeded"] == BATCH
    assert {j.status for j in rows(ctx, ids).values()} == {"succeeded"}


def test_a_transient_error_every_job_hits_hands_the_batch_back(ctx, monkeypatch):
    ids = make_jobs(ctx, 4)
    calls = counting_render(monkeypatch, lambda items: TimeoutError("device timed out"))
    summary = run_render(ctx, ids)
    assert calls == [4, 2, 2]
    assert summary.outcomes["retried"] == 4
    for job in rows(ctx, ids).values():
        assert job.status == "queued"
        assert job.error == "attempt 1: a temporary fault (TimeoutError); retrying in 2s"


# --- what a failed job's row says -----------------------------------------------------------


def test_an_internal_error_reads_as_what_to_do_and_its_text_goes_to_the_log(
    ctx, monkeypatch, caplog
):
    ids = make_jobs(ctx, 2, in_batch=True)
    (single,) = make_jobs(ctx, 1)
    counting_render(
        monkeypatch, lambda items: OverflowError("signed integer is greater than maximum")
    )
    with caplog.at_level(logging.ERROR, logger="worker.tasks"):
        run_render(ctx, ids)
        run_render(ctx, [single])
    found = rows(ctx, [*ids, single])
    batch_id = found[ids[0]].batch_id
    for job_id in ids:
        assert found[job_id].error == (
            "the render failed because of an internal error (OverflowError); the farm's "
            f"operators have the details; retry with POST /v1/batches/{batch_id}/retry "
            "or resubmit"
        )
    assert found[single].error is not None and found[single].error.endswith("resubmit the job")
    assert "signed integer" not in found[single].error
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "signed integer is greater than maximum" in logged, "the operators' details"


def test_an_input_error_reads_as_its_own_message(ctx, monkeypatch):
    (job_id,) = make_jobs(ctx, 1)
    error = PermanentRenderError("mask is 10x10 but the source is 40x40; they must match")
    counting_render(monkeypatch, lambda items: error)
    run_render(ctx, [job_id])
    assert rows(ctx, [job_id])[job_id].error == str(error)


# --- a retried database write counts once ----------------------------------------------------


@pytest.fixture
def commit_fails_once(monkeypatch) -> list[int]:
    """The first transaction worker/tasks.py opens loses its connection at commit; returns
    the list of transactions opened."""
    opened: list[int] = []

    @contextmanager
    def flaky(factory: Any) -> Iterator[Any]:
        opened.append(1)
        if len(opened) > 1:
            with session_scope(factory) as session:
                yield session
            return
        session = factory()
        try:
            yield session
        finally:
            session.rollback()
            session.close()
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(tasks, "session_scope", flaky)
    return opened


@pytest.mark.parametrize(
    "exc,outcome,status",
    [
        (OverflowError("boom"), "failed", "failed"),
        (TransientError("S3 get failed: 503 Slow Down"), "retried", "queued"),
    ],
)
def test_a_retried_failure_write_counts_once(ctx, request, exc, outcome, status):
    (job_id,) = make_jobs(ctx, 1, webhook_url="http://receiver.invalid/hook")
    (job,) = claim_jobs(ctx, [job_id])
    opened = request.getfixturevalue("commit_fails_once")  # after the claim's own commit
    summary = BatchSummary(model="echo")
    record_failure(ctx, job, exc, summary)
    assert len(opened) == 2, "the write was tried again after the lost commit"
    assert dict(summary.outcomes) == {outcome: 1}
    assert len(summary.unexpected) == (1 if outcome == "failed" else 0)
    assert rows(ctx, [job_id])[job_id].status == status
    with ctx.session_factory() as session:
        events = session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == JOB_FAILED)
        )
    assert events == (1 if status == "failed" else 0), "one job.failed event, not two"


# --- the task's unexpected failures, as the worker's metrics count them ----------------------


def test_metrics_count_a_raised_batch_by_its_real_outcomes(ctx, monkeypatch):
    ids = make_jobs(ctx, BATCH)
    real_store = tasks.store_output

    def store_output(model: Any, storage: Any, item: RenderItem, *a: Any, **k: Any) -> Any:
        if item.job.id == ids[3]:
            raise OverflowError("signed integer is greater than maximum")
        return real_store(model, storage, item, *a, **k)

    monkeypatch.setattr(tasks, "store_output", store_output)
    app = Celery("test-failures")
    register_tasks(app, ctx)
    model = f"m-{uuid.uuid4().hex[:6]}"
    metrics = WorkerMetrics(model=model)
    metrics.connect()
    try:
        result = app.tasks[RENDER_TASK].apply(args=[[str(i) for i in ids]])
    finally:
        metrics.disconnect()
    assert result.state == "FAILURE" and type(result.result).__name__ == "RenderFailed"
    counts = {
        o: sample("imgfarm_worker_jobs_total", model=model, outcome=o)
        for o in ("succeeded", "failed", "error")
    }
    assert counts == {"succeeded": BATCH - 1, "failed": 1, "error": 0}
    assert sample("imgfarm_render_batch_size_sum", model=model) == BATCH
