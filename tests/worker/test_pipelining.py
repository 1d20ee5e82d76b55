"""The worker's stages overlap: one task's uploads run while the next task renders.

In process, on Postgres and local storage, with real render tasks (``run_render``) in
threads as Celery's thread pool runs them. Storage wrappers block or fail on purpose so
that the order of events is forced, not timed.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from PIL import Image
from sqlalchemy import select

from shared.db import session_scope
from shared.errors import TransientError
from shared.images import encode_image
from shared.jobs import cancel
from shared.models import Job, utcnow
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.teams import ensure_team
from tests.services import wait_for
from tests.worker.test_kinds import cutout, make_job, png
from worker.context import WorkerContext
from worker.device import DeviceLane
from worker.pipelines import load_model
from worker.tasks import BatchSummary, run_render

WAIT = 30.0  # seconds: a bound for conditions that hold within milliseconds when correct


class GatedStorage(LocalStorage):
    """Local storage whose output uploads wait for ``gate`` (sources are read freely)."""

    def __init__(self, *args, gate: threading.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.waiting = threading.Event()

    def put(self, key, data, content_type, metadata=None) -> None:
        if key.startswith("outputs/") or "/outputs/" in key:
            self.waiting.set()
            if not self.gate.wait(WAIT):
                raise AssertionError("upload gate never opened: stages did not overlap")
        super().put(key, data, content_type, metadata=metadata)


class FlakyStorage(LocalStorage):
    """Local storage that fails the first upload of one chosen job with a transient error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_job: uuid.UUID | None = None

    def put(self, key, data, content_type, metadata=None) -> None:
        if self.fail_job is not None and str(self.fail_job) in key:
            self.fail_job = None
            raise TransientError("S3 answered 503 Slow Down")
        super().put(key, data, content_type, metadata=metadata)


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    return load_model(BUILTINS["echo"], Settings(data_dir=tmp_path_factory.mktemp("d")))


@pytest.fixture
def make_ctx(settings, session_factory) -> Iterator[Callable[..., WorkerContext]]:
    made: list[WorkerContext] = []

    def make(model, storage, lane: DeviceLane | None = None) -> WorkerContext:
        ctx = WorkerContext(
            settings=settings,
            model=model,
            storage=storage,
            session_factory=session_factory,
            name=f"pipelining-{uuid.uuid4().hex[:6]}",
            device=lane or DeviceLane(),
        )
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


def queued_jobs(session_factory, storage, alias: str, count: int) -> list[uuid.UUID]:
    with session_scope(session_factory) as session:
        team = ensure_team(session, f"pipe-{uuid.uuid4().hex[:8]}")
        jobs = [make_job(storage, alias, png(cutout(64, 64)), seed=i) for i in range(count)]
        for job in jobs:
            job.team_id = team.id
            session.add(job)
        return [job.id for job in jobs]


def rows(session_factory, ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
    with session_factory() as session:
        return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}


def in_thread(fn: Callable[[], BatchSummary]) -> tuple[threading.Thread, list[BatchSummary]]:
    out: list[BatchSummary] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


@contextmanager
def behind_a_busy_device(ctx: WorkerContext, ids: list[uuid.UUID]) -> Iterator[list[BatchSummary]]:
    """``run_render(ctx, ids)`` in a thread while another call holds the device: inside the
    block the task has claimed its jobs and waits for the device; on leaving it the device
    is freed and the task has finished (its summary is the list's one item)."""
    release = threading.Event()
    threading.Thread(target=lambda: ctx.device.run(release.wait, WAIT), daemon=True).start()
    task, out = in_thread(lambda: run_render(ctx, ids))

    def claimed() -> bool:  # in the database: the task holds them in memory from just before
        return {j.status for j in rows(ctx.session_factory, ids).values()} == {"running"}

    wait_for(claimed, WAIT, "the task's claim")
    yield out
    release.set()
    task.join(WAIT)


def test_device_lane_runs_calls_in_order_on_one_thread_and_counts_busy_time():
    busy: list[float] = []
    lane = DeviceLane(on_busy=busy.append)
    try:
        threads = {lane.run(threading.get_ident) for _ in range(5)}
        assert len(threads) == 1 and threading.get_ident() not in threads
        with pytest.raises(ZeroDivisionError):
            lane.run(lambda: 1 / 0)
        assert lane.calls == 6 and len(busy) == 6, "a failed call is still counted"
        assert lane.busy_seconds == pytest.approx(sum(busy))
    finally:
        lane.shutdown()


def test_device_lane_reports_how_long_each_call_waited_in_line():
    waits: list[float] = []
    lane = DeviceLane(on_wait=waits.append)
    release, holding = threading.Event(), threading.Event()
    try:
        first = threading.Thread(
            target=lambda: lane.run(lambda: (holding.set(), release.wait(WAIT))), daemon=True
        )
        first.start()
        assert holding.wait(WAIT)
        second, _ = in_thread(lambda: lane.run(lambda: None))
        time.sleep(0.3)  # the time the second call spends in line is what is measured
        release.set()
        first.join(WAIT)
        second.join(WAIT)
        assert len(waits) == 2
        assert waits[0] < 0.3 <= waits[1], waits
    finally:
        lane.shutdown()


def test_queue_wait_runs_until_the_render_starts_not_until_the_claim(
    tmp_path, echo, make_ctx, session_factory
):
    """With pipelining a claimed job may still wait behind other batches for the device:
    that wait is queue time as a customer sees it, so the metric must include it."""
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    ctx = make_ctx(echo, storage)
    ids = queued_jobs(session_factory, storage, "echo", 2)
    with behind_a_busy_device(ctx, ids) as out:
        time.sleep(0.3)  # claimed, and kept waiting for the device this long
        released_at = utcnow()
    created = {j.id: j.created_at for j in rows(session_factory, ids).values()}
    waits = out[0].queue_wait_seconds
    assert set(waits) == set(ids)
    for job_id in ids:
        assert waits[job_id] >= (released_at - created[job_id]).total_seconds() - 0.01
    assert len(out[0].as_dict()["queue_wait_seconds"]) == 2


def test_next_task_renders_while_the_previous_one_uploads(
    tmp_path, echo, make_ctx, session_factory
):
    """Task A renders, then blocks in its uploads; task B must get the device meanwhile.
    Run one after the other (no overlap), A's uploads would wait for B's render forever."""
    gate = threading.Event()
    storage = GatedStorage(tmp_path / "objects", "http://test", "secret", gate=gate)
    renders: list[float] = []

    def on_busy(seconds: float) -> None:
        renders.append(seconds)
        if len(renders) == 2:  # B rendered while A was still waiting to upload
            gate.set()

    ctx = make_ctx(echo, storage, DeviceLane(on_busy=on_busy))
    a_ids = queued_jobs(session_factory, storage, "echo", 3)
    b_ids = queued_jobs(session_factory, storage, "echo", 3)

    a, a_out = in_thread(lambda: run_render(ctx, a_ids))
    assert storage.waiting.wait(WAIT), "task A never reached its uploads"
    assert not gate.is_set() and len(renders) == 1
    b, b_out = in_thread(lambda: run_render(ctx, b_ids))
    a.join(WAIT)
    b.join(WAIT)

    assert gate.is_set() and len(renders) == 2
    assert a_out[0].outcomes["succeeded"] == 3 and b_out[0].outcomes["succeeded"] == 3
    assert {r.status for r in rows(session_factory, a_ids + b_ids).values()} == {"succeeded"}
    assert ctx.in_flight.snapshot() == set(), "finished tasks leave nothing in flight"


def test_job_canceled_while_waiting_for_the_device_is_never_rendered(
    tmp_path, echo, make_ctx, session_factory
):
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    ctx = make_ctx(echo, storage)
    keep, drop = queued_jobs(session_factory, storage, "echo", 2)
    with behind_a_busy_device(ctx, [keep, drop]) as out:
        with session_scope(session_factory) as session:
            assert cancel(session, drop)
        ctx.in_flight.mark_canceled({drop})  # what the heartbeat does when it sees the cancel

    summary = out[0]
    assert summary.outcomes["succeeded"] == 1 and summary.outcomes["canceled"] == 1
    assert summary.batch_size == 1, "the canceled job did not take a pipeline slot"
    final = rows(session_factory, [keep, drop])
    assert final[keep].status == "succeeded"
    assert final[drop].status == "canceled" and not final[drop].outputs


def test_failed_upload_retries_its_own_job_without_rendering_the_others_again(
    tmp_path, echo, make_ctx, session_factory
):
    storage = FlakyStorage(tmp_path / "objects", "http://test", "secret")
    ctx = make_ctx(echo, storage)
    ids = queued_jobs(session_factory, storage, "echo", 4)
    storage.fail_job = ids[1]

    summary = run_render(ctx, ids)

    assert ctx.device.calls == 1, "one pipeline call: an upload failure must not split it"
    assert summary.outcomes["succeeded"] == 3 and summary.outcomes["retried"] == 1
    final = rows(session_factory, ids)
    retried = final[ids[1]]
    assert retried.status == "queued" and retried.not_before is not None
    assert "503 Slow Down" in (retried.error or "")
    assert all(final[i].status == "succeeded" for i in ids if i != ids[1])


def test_job_canceled_mid_render_before_the_heartbeat_noticed_leaves_no_output(
    tmp_path, echo, make_ctx, session_factory
):
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    ctx = make_ctx(echo, storage)
    keep, drop = queued_jobs(session_factory, storage, "echo", 2)
    with behind_a_busy_device(ctx, [keep, drop]) as out, session_scope(session_factory) as s:
        assert cancel(s, drop)  # no heartbeat here: only the database knows

    summary = out[0]
    assert summary.batch_size == 2, "rendered: the worker did not know yet"
    assert summary.outcomes["succeeded"] == 1 and summary.outcomes["canceled"] == 1
    final = rows(session_factory, [keep, drop])
    assert final[drop].status == "canceled" and not final[drop].outputs
    team = final[drop].team_id
    assert not list((tmp_path / "objects" / "outputs" / str(team) / str(drop)).glob("*"))
    assert list((tmp_path / "objects" / "outputs" / str(team) / str(keep)).glob("*"))


@pytest.mark.parametrize("level", [0, 9])
def test_outputs_are_encoded_at_the_configured_png_level(
    tmp_path, echo, make_ctx, session_factory, level
):
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    ctx = make_ctx(echo, storage)
    ctx.settings = ctx.settings.model_copy(update={"worker_png_compress_level": level})
    (job_id,) = queued_jobs(session_factory, storage, "echo", 1)
    assert run_render(ctx, [job_id]).outcomes["succeeded"] == 1
    data = storage.get(rows(session_factory, [job_id])[job_id].outputs[0]["key"])
    image = Image.open(io.BytesIO(data))
    label = image.info["XML:com.adobe.xmp"].encode()  # every output carries its XMP label
    assert data == encode_image(image, "png", png_compress_level=level, xmp=label)
    assert (len(data) > image.width * image.height * 3) == (level == 0), "0 stores raw"
