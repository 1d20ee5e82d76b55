"""Recently fetched sources, kept in the worker's memory so a product photo is fetched once.

The e-commerce workload is one photo x many prompts x many variants: a 10,000-job batch may
reference 100 images, so without a cache each source is fetched from S3 a hundred times,
and up to ``max_batch`` times at once within one batch (prepare runs side by side).

Only content-addressed keys are cached (``sources/{team}/{sha256}``, shared/storage.py):
their bytes can never change, so a cached copy is never stale, and the team is in the key,
so nothing is shared between teams. Concurrent misses for one key make one fetch (the
others wait for it). Bounded by bytes, least recently used first out (cachetools).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from cachetools import LRUCache

from shared.storage import Storage

CACHEABLE_PREFIX = "sources/"


class CachingStorage:
    """``storage`` with a byte-bounded LRU cache in front of ``get`` for sources."""

    def __init__(
        self,
        storage: Storage,
        max_bytes: int,
        on_lookup: Callable[[bool], None] = lambda hit: None,
    ) -> None:
        self.inner = storage
        self.max_bytes = max_bytes
        self._on_lookup = on_lookup  # called with hit=True/False (a metric)
        self._cache: LRUCache[str, bytes] = LRUCache(maxsize=max(1, max_bytes), getsizeof=len)
        self._fetching: dict[str, Future[bytes]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes:
        if self.max_bytes <= 0 or not key.startswith(CACHEABLE_PREFIX):
            return self.inner.get(key)
        found, owner = self._lookup(key)
        self._on_lookup(not owner)
        if isinstance(found, bytes):
            return found
        return self._fetch(key, found) if owner else found.result()

    def _lookup(self, key: str) -> tuple[bytes | Future[bytes], bool]:
        """Under the lock: the cached bytes, else the fetch to wait for and whether this
        caller owns it (a fetch by another thread serves this caller too: a hit)."""
        with self._lock:
            found: bytes | Future[bytes] | None = self._cache.get(key) or self._fetching.get(key)
            owner = found is None
            if found is None:
                self.misses += 1
                self._fetching[key] = found = Future()
            else:
                self.hits += 1
        return found, owner

    def _fetch(self, key: str, fetching: Future[bytes]) -> bytes:
        try:
            data = self.inner.get(key)
        except BaseException as e:
            with self._lock:
                del self._fetching[key]
            fetching.set_exception(e)  # the waiters fail like the fetch did (and retry)
            raise
        with self._lock:
            if len(data) <= self.max_bytes:
                self._cache[key] = data
            del self._fetching[key]
        fetching.set_result(data)
        return data

    # --- the rest of the Storage protocol goes straight through ---

    def put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        self.inner.put(key, data, content_type, metadata=metadata)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def url(self, key: str, expires_in: int) -> str:
        return self.inner.url(key, expires_in)

    def check(self) -> None:
        self.inner.check()
