"""A worker's Prometheus metrics, fed by Celery signals so task code stays free of them.

``install_worker_metrics(app, settings, alias)`` is called once when a worker process is
built: it connects the signal receivers below and serves ``/metrics`` on
``IMGFARM_METRICS_PORT`` (see ``shared/metrics.py``, also for prometheus-client's
multiprocess mode when a prefork pool shares the port).

The render task returns a summary that is read here, defensively (older workers returned a
bare outcome string); when some of its jobs failed unexpectedly it raises ``RenderFailed``
with the same summary as its ``summary`` attribute:

    {"model": "sd-turbo", "batch_size": 4, "render_seconds": 1.8, "load": None,
     "outcomes": {"succeeded": 3, "failed": 1}, "queue_wait_seconds": [12.1, 12.0, 9.5, 9.4]}
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, signals
from prometheus_client import Counter, Gauge, Histogram

from shared.broker import RENDER_TASK
from shared.metrics import MetricsServer, mark_process_dead, start_metrics_server
from shared.settings import Settings

log = logging.getLogger(__name__)

RENDER_SECONDS = Histogram(
    "imgfarm_render_seconds",
    "Seconds one batch spent in the pipeline (all its images together), by model.",
    ["model"],
    # From a tiny CPU model (~0.1 s) to a large batch of a full-size model (minutes).
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600),
)
BATCH_SIZE = Histogram(
    "imgfarm_render_batch_size",
    "Jobs rendered together in one pipeline call, by model.",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)
QUEUE_WAIT_SECONDS = Histogram(
    "imgfarm_queue_wait_seconds",
    "Seconds from a job's creation to the start of its render, by model.",
    ["model"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
JOBS = Counter(
    "imgfarm_worker_jobs_total",
    "Jobs a render task finished with, by model and outcome "
    "(succeeded, failed, retried, skipped, canceled, superseded, error).",
    ["model", "outcome"],
)
TASKS = Counter(
    "imgfarm_worker_tasks_total",
    "Celery tasks this worker ran, by task name and final state (SUCCESS, FAILURE, RETRY).",
    ["task", "state"],
)
TASK_SECONDS = Histogram(
    "imgfarm_worker_task_seconds",
    "Wall time of a Celery task on this worker (claim + render + record), by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600),
)
TASK_FAILURES = Counter(
    "imgfarm_worker_task_failures_total",
    "Tasks that raised, by task name and exception class.",
    ["task", "exception"],
)
MODEL_LOAD_SECONDS = Gauge(
    "imgfarm_model_load_seconds",
    "Seconds this worker took to load and warm up its model.",
    ["model"],
    multiprocess_mode="livemax",
)
WORKER_READY = Gauge(
    "imgfarm_worker_ready",
    "1 while this worker consumes its queue, 0 once it is shutting down.",
    ["model"],
    multiprocess_mode="livemax",
)
WORKER_BUSY = Gauge(
    "imgfarm_worker_busy",
    "Render tasks in progress in this worker (up to IMGFARM_WORKER_PIPELINE_DEPTH).",
    ["model"],
    multiprocess_mode="livesum",
)
DEVICE_BUSY_SECONDS = Counter(
    "imgfarm_worker_device_busy_seconds_total",
    "Seconds the worker's device lane spent in pipeline calls (and in load and warm-up); "
    "its rate is the GPU's duty cycle: 1 means the GPU never waited for the CPU.",
    ["model"],
)
DEVICE_WAIT_SECONDS = Histogram(
    "imgfarm_worker_device_wait_seconds",
    "Seconds a call (a prepared batch) waited in line for the worker's device lane, by model. "
    "Up to (pipeline depth - 1) batches' render time when the GPU is the bottleneck, as it "
    "should be; near zero with a low duty cycle means the CPU stages cannot keep up.",
    ["model"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
SOURCE_CACHE = Counter(
    "imgfarm_worker_source_cache_lookups_total",
    "Source fetches answered from the worker's memory (hit) or from storage (miss).",
    ["model", "result"],
)
GPU_MEMORY_BYTES = Gauge(
    "imgfarm_gpu_memory_bytes",
    "CUDA memory of this worker's device: allocated / reserved / peak_allocated by torch "
    "in this process, free / total on the device.",
    ["model", "device", "kind"],
    multiprocess_mode="livemax",
)


def source_cache_recorder(model: str) -> Callable[[bool], None]:
    """The source cache's ``on_lookup``: count hits and misses of this model's worker."""
    hit, miss = SOURCE_CACHE.labels(model, "hit"), SOURCE_CACHE.labels(model, "miss")
    return lambda was_hit: (hit if was_hit else miss).inc()


def device_busy_recorder(model: str) -> Callable[[float], None]:
    """The device lane's ``on_busy``: add each call's seconds to this model's counter."""
    return DEVICE_BUSY_SECONDS.labels(model).inc


def device_wait_recorder(model: str) -> Callable[[float], None]:
    """The device lane's ``on_wait``: observe each call's seconds in line."""
    return DEVICE_WAIT_SECONDS.labels(model).observe


# A label value for workers without a model (the webhook delivery worker).
NO_MODEL = "none"


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (bool included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _job_ids(args: Iterable[Any] | None) -> list[str]:
    # Render tasks carry job ids: one id, or a list of ids for a batch.
    ids: list[str] = []
    for arg in args or ():
        if isinstance(arg, str):
            ids.append(arg)
        elif isinstance(arg, list | tuple):
            ids.extend(a for a in arg if isinstance(a, str))
    return ids


def load_seconds_of(value: Any) -> float | None:
    """Load time from a summary's ``load`` field: seconds, or a mapping with ``seconds``."""
    if isinstance(value, Mapping):
        value = value.get("seconds", value.get("load_seconds"))
    return _number(value)


def record_render_summary(model: str, summary: Any) -> None:
    """Observe what one render task returned (a summary mapping, or an outcome string)."""
    if isinstance(summary, str):
        # Older tasks returned one job's outcome: "succeeded", "failed", "skipped", ...
        JOBS.labels(model, summary).inc()
        return
    if not isinstance(summary, Mapping):
        return
    outcomes = summary.get("outcomes")
    for outcome, count in outcomes.items() if isinstance(outcomes, Mapping) else ():
        n = _number(count)
        if n and n > 0:
            JOBS.labels(model, str(outcome)).inc(n)
    batch = _number(summary.get("batch_size"))
    if batch and batch > 0:
        # A task whose jobs were all skipped or canceled rendered nothing: no batch to time.
        BATCH_SIZE.labels(model).observe(batch)
        render = _number(summary.get("render_seconds"))
        if render is not None and render > 0:
            RENDER_SECONDS.labels(model).observe(render)
    waits = summary.get("queue_wait_seconds")
    for wait in waits if isinstance(waits, list) else []:
        seconds = _number(wait)
        if seconds is not None and seconds >= 0:
            QUEUE_WAIT_SECONDS.labels(model).observe(seconds)
    load = load_seconds_of(summary.get("load"))
    if load is not None:
        MODEL_LOAD_SECONDS.labels(model).set(load)


def update_gpu_memory(model: str) -> None:
    """Refresh GPU_MEMORY_BYTES from torch, if this process uses CUDA (never imports torch)."""
    torch = sys.modules.get("torch")
    # Not initialized: this process never touched CUDA; asking would create a context.
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    index = torch.cuda.current_device()
    device = f"cuda:{index}"
    free, total = torch.cuda.mem_get_info(index)
    values = {
        "allocated": torch.cuda.memory_allocated(index),
        "reserved": torch.cuda.memory_reserved(index),
        "peak_allocated": torch.cuda.max_memory_allocated(index),
        "free": free,
        "total": total,
    }
    for kind, value in values.items():
        GPU_MEMORY_BYTES.labels(model, device, kind).set(value)


@dataclass
class WorkerMetrics:
    """The signal receivers of one worker process, bound to its model alias."""

    model: str
    render_task: str = RENDER_TASK
    server: MetricsServer | None = None
    _started: dict[str, float] = field(default_factory=dict)
    _uid: str = ""

    # --- receivers (Celery passes everything as keywords) ---

    def on_task_prerun(self, task_id: str | None = None, **_: Any) -> None:
        self._started[str(task_id)] = time.perf_counter()
        WORKER_BUSY.labels(self.model).inc()

    def on_task_postrun(
        self,
        task_id: str | None = None,
        task: Any = None,
        args: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        name = str(getattr(task, "name", "unknown"))
        started = self._started.pop(str(task_id), None)
        if started is not None:
            TASK_SECONDS.labels(name).observe(time.perf_counter() - started)
        TASKS.labels(name, state or "UNKNOWN").inc()
        WORKER_BUSY.labels(self.model).dec()
        if name == self.render_task:
            self._record_render(retval, state, args)
        try:
            update_gpu_memory(self.model)
        except Exception as e:  # a metrics read must never fail a worker
            log.debug("GPU memory metrics unavailable: %s", e)

    def _record_render(self, retval: Any, state: str | None, args: Any) -> None:
        if state == "SUCCESS":
            record_render_summary(self.model, retval)
        elif state == "FAILURE":
            # RenderFailed (worker/tasks.py) carries the batch's summary: its jobs' real
            # outcomes. Anything else raised before outcomes were known: count its jobs.
            summary = getattr(retval, "summary", None)
            if summary is not None:
                record_render_summary(self.model, summary)
            else:
                JOBS.labels(self.model, "error").inc(max(1, len(_job_ids(args))))
        # RETRY: the same message comes back; its jobs are counted when it finishes.

    def on_task_failure(self, sender: Any = None, exception: Any = None, **_: Any) -> None:
        name = str(getattr(sender, "name", "unknown"))
        TASK_FAILURES.labels(name, type(exception).__name__).inc()

    def on_worker_ready(self, **_: Any) -> None:
        WORKER_READY.labels(self.model).set(1)

    def on_worker_shutdown(self, **_: Any) -> None:
        WORKER_READY.labels(self.model).set(0)
        if self.server is not None:
            self.server.close()
            self.server = None
        mark_process_dead()

    def on_worker_process_shutdown(self, pid: int | None = None, **_: Any) -> None:
        # A prefork child leaving: its live gauges must not linger in the shared files.
        mark_process_dead(pid)

    # --- wiring ---

    def _receivers(self) -> list[tuple[Any, Any]]:
        return [
            (signals.task_prerun, self.on_task_prerun),
            (signals.task_postrun, self.on_task_postrun),
            (signals.task_failure, self.on_task_failure),
            (signals.worker_ready, self.on_worker_ready),
            (signals.worker_shutdown, self.on_worker_shutdown),
            (signals.worker_process_shutdown, self.on_worker_process_shutdown),
        ]

    def connect(self) -> None:
        """Connect every receiver (strongly: Celery keeps weak references by default)."""
        self._uid = f"imgfarm-metrics-{id(self)}"
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False, dispatch_uid=self._uid)

    def disconnect(self) -> None:
        """Undo ``connect`` and stop the metrics server (tests; a process does not need it)."""
        for signal, receiver in self._receivers():
            signal.disconnect(receiver, dispatch_uid=self._uid)
        if self.server is not None:
            self.server.close()
            self.server = None


def install_worker_metrics(
    app: Celery,
    settings: Settings,
    model_alias: str | None,
    *,
    load_seconds: float | None = None,
) -> WorkerMetrics:
    """Measure this worker's tasks and serve them on ``IMGFARM_METRICS_PORT`` (if set).

    Call once per process, after the model is loaded (pass its ``load_seconds``) and before
    ``worker_main``; ``model_alias`` is None for workers without a model (webhooks).
    """
    model = model_alias or NO_MODEL
    # Celery signals are process-wide; only this app's tasks run here. Kept for the record.
    log.debug("worker metrics for %s on app %s", model, app.main)
    if load_seconds is not None:
        MODEL_LOAD_SECONDS.labels(model).set(load_seconds)
    WORKER_READY.labels(model).set(0)
    WORKER_BUSY.labels(model).set(0)
    metrics = WorkerMetrics(model=model)
    metrics.connect()
    metrics.server = start_metrics_server(settings)
    return metrics


# A sibling of SOURCE_CACHE rather than a label on it: that counter's series stay as they were.
PREPARED_CACHE = Counter(
    "imgfarm_worker_prepared_cache_lookups_total",
    "Prepared inputs (a source decoded and resized to an output size, with its conditioning) "
    "reused from the worker's memory (hit) or prepared again (miss).",
    ["model", "result"],
)


def prepared_cache_recorder(model: str) -> Callable[[bool], None]:
    """The prepared cache's ``on_lookup``: count hits and misses of this model's worker."""
    hit, miss = PREPARED_CACHE.labels(model, "hit"), PREPARED_CACHE.labels(model, "miss")
    return lambda was_hit: (hit if was_hit else miss).inc()
