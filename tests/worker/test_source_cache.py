"""The worker's source cache: one fetch per content-addressed source, bounded, never shared
across keys it must not cache, and one fetch for concurrent misses."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.errors import TransientError
from shared.models import Job
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.teams import ensure_team
from tests.services import wait_for
from tests.worker.test_kinds import cutout, make_job, png
from worker.context import WorkerContext
from worker.pipelines import load_model
from worker.source_cache import CachingStorage
from worker.tasks import run_render


class CountingStorage(LocalStorage):
    """Local storage counting its gets; ``gate`` (if set) holds every get until opened,
    ``fail`` makes the next get raise."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gets: Counter[str] = Counter()
        self.gate: threading.Event | None = None
        self.fail = False

    def get(self, key: str) -> bytes:
        self.gets[key] += 1
        if self.gate is not None:
            assert self.gate.wait(30), "gate never opened"
        if self.fail:
            self.fail = False
            raise TransientError("S3 503")
        return super().get(key)


@pytest.fixture
def inner(tmp_path):
    return CountingStorage(tmp_path / "objects", "http://test", "secret")


def source(inner: CountingStorage, size: int = 4) -> str:
    key = f"sources/{uuid.uuid4()}/{uuid.uuid4().hex}"
    inner.put(key, b"x" * size, "image/png")
    return key


def test_a_source_is_fetched_once_and_outputs_are_never_cached(inner):
    lookups: list[bool] = []
    cache = CachingStorage(inner, 1024, on_lookup=lookups.append)
    key = source(inner)
    assert [cache.get(key) for _ in range(3)] == [b"xxxx"] * 3
    assert inner.gets[key] == 1 and (cache.hits, cache.misses) == (2, 1)
    assert lookups == [False, True, True]
    out = "outputs/t/j/0.png"
    cache.put(out, b"png", "image/png")
    cache.get(out)
    cache.get(out)
    assert inner.gets[out] == 2, "only content-addressed sources are cached"


def test_least_recently_used_source_leaves_first_when_full(inner):
    cache = CachingStorage(inner, 10)  # room for two 4-byte sources
    a, b, c = source(inner), source(inner), source(inner)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recently used
    cache.get(c)  # evicts b
    cache.get(a)
    cache.get(b)
    assert (inner.gets[a], inner.gets[b], inner.gets[c]) == (1, 2, 1)
    big = source(inner, size=11)
    cache.get(big)
    cache.get(big)
    assert inner.gets[big] == 2, "a source larger than the cache is not kept"


def test_concurrent_misses_make_one_fetch(inner):
    cache = CachingStorage(inner, 1024)
    key = source(inner)
    inner.gate = threading.Event()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(key))) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: cache.hits + cache.misses == 8, 30, "all eight lookups")
    inner.gate.set()
    for t in threads:
        t.join(30)
    assert results == [b"xxxx"] * 8 and inner.gets[key] == 1


def test_a_failed_fetch_fails_its_waiters_and_is_retried_next_time(inner):
    cache = CachingStorage(inner, 1024)
    key = source(inner)
    inner.fail = True
    with pytest.raises(TransientError):
        cache.get(key)
    assert cache.get(key) == b"xxxx" and inner.gets[key] == 2


def test_zero_bytes_turns_the_cache_off(inner):
    cache = CachingStorage(inner, 0)
    key = source(inner)
    cache.get(key)
    cache.get(key)
    assert inner.gets[key] == 2


def echo_context(
    tmp_path, settings, session_factory, storage: CachingStorage, **fields
) -> WorkerContext:
    """A worker context serving the ``echo`` model (``fields``: more of its fields)."""
    echo = load_model(BUILTINS["echo"], Settings(data_dir=tmp_path))
    return WorkerContext(
        settings=settings, model=echo, storage=storage, session_factory=session_factory, **fields
    )


def render_variants_of_one_photo(
    ctx: WorkerContext, inner: CountingStorage, session_factory, variants: int = 6
) -> str:
    """Render ``variants`` jobs of one photo in one task (closing ``ctx``), check that all
    succeeded; the photo's key."""
    photo = png(cutout(64, 64))
    with session_scope(session_factory) as session:
        team = ensure_team(session, f"cache-{uuid.uuid4().hex[:8]}")
        jobs = [make_job(inner, "echo", photo, seed=i) for i in range(variants)]
        key = f"sources/{team.id}/one-photo"
        inner.put(key, photo, "image/png")
        for job in jobs:
            job.team_id, job.source_key = team.id, key
            session.add(job)
        ids = [job.id for job in jobs]
    try:
        summary = run_render(ctx, ids)
    finally:
        ctx.close()
    assert summary.outcomes["succeeded"] == variants
    with session_factory() as session:
        assert {j.status for j in session.scalars(select(Job).where(Job.id.in_(ids)))} == {
            "succeeded"
        }
    return key


def test_a_batch_of_variants_of_one_photo_fetches_it_once(
    tmp_path, inner, settings, session_factory
):
    ctx = echo_context(tmp_path, settings, session_factory, CachingStorage(inner, 1 << 20))
    key = render_variants_of_one_photo(ctx, inner, session_factory)
    assert inner.gets[key] == 1, "six jobs, one fetch"
