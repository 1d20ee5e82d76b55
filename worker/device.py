"""The device lane: one thread that does all of a worker's accelerator work, in order.

A render task has three stages: claim + fetch + decode its sources (CPU, network), the
pipeline call (the GPU), encode + upload + record its outputs (CPU, network). The worker
runs a few tasks at once (Celery's thread pool, ``IMGFARM_WORKER_PIPELINE_DEPTH``) so that
one task's CPU stages run while another's pipeline call keeps the GPU busy; this lane is
where they queue for the GPU, one call at a time, first come first served.

Why one dedicated thread rather than a lock: torch.compile's CUDA graphs are recorded per
thread, and warm-up must run where the renders will run, so the model is loaded, warmed and
called on this very thread for the worker's whole life.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DeviceLane:
    """Runs callables on one thread, in submission order, and counts its busy seconds.

    ``busy_seconds`` over wall time is the accelerator's duty cycle as the worker sees it:
    the share of time a pipeline call was running rather than the GPU waiting for work.
    ``on_wait`` gets each call's seconds in line before it started: the other side of the
    same coin, time a prepared batch spent waiting for the GPU (near zero while the duty
    cycle is low means the CPU stages cannot keep up; high means the GPU is the bottleneck).
    """

    def __init__(
        self,
        on_busy: Callable[[float], None] = lambda _: None,
        on_wait: Callable[[float], None] = lambda _: None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgfarm-device")
        self._on_busy = on_busy
        self._on_wait = on_wait
        self._lock = threading.Lock()
        self._busy = 0.0
        self._calls = 0

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` on the lane's thread and wait for its result (or exception)."""
        queued = time.perf_counter()
        return self._executor.submit(self._timed, queued, partial(fn, *args, **kwargs)).result()

    def _timed(self, queued: float, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        self._on_wait(started - queued)
        try:
            return call()
        finally:
            seconds = time.perf_counter() - started
            with self._lock:
                self._busy += seconds
                self._calls += 1
            self._on_busy(seconds)

    @property
    def busy_seconds(self) -> float:
        with self._lock:
            return self._busy

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    def shutdown(self) -> None:
        """Finish what was submitted, then stop the thread."""
        self._executor.shutdown(wait=True)
