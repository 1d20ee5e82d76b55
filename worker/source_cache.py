"""Recently fetched sources, kept in the worker's memory so a product photo is fetched once.

The e-commerce workload is one photo x many prompts x many variants: a 10,000-job batch may
reference 100 images, so without a cache each source is fetched from S3 a hundred times,
and up to ``max_batch`` times at once within one batch (prepare runs side by side).

Only content-addressed keys are cached (``sources/{team}/{sha256}``, shared/storage.py):
their bytes can never change, so a cached copy is never stale, and the team is in the key,
so nothing is shared between teams. Concurrent misses for one key make one fetch (the
others wait for it). Bounded by bytes, least recently used first out (worker/single_flight.py).
A job whose prepared inputs are cached (worker/prepared_cache.py) does not ask for its source.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.storage import Storage, content_addressed
from worker.single_flight import SingleFlightLRU


class CachingStorage:
    """``storage`` with a byte-bounded LRU cache in front of ``get`` for sources."""

    def __init__(
        self,
        storage: Storage,
        max_bytes: int,
        on_lookup: Callable[[bool], None] = lambda hit: None,
    ) -> None:
        self.inner = storage
        self.cache: SingleFlightLRU[str, bytes] = SingleFlightLRU(max_bytes, len, on_lookup)

    @property
    def hits(self) -> int:
        """Gets answered from memory, or by another thread's fetch of the same key."""
        return self.cache.hits

    @property
    def misses(self) -> int:
        """Gets that fetched from ``inner`` (sources only)."""
        return self.cache.misses

    def get(self, key: str) -> bytes:
        if not content_addressed(key):
            return self.inner.get(key)
        # A failed fetch fails its waiters too (they retry, as the job would).
        return self.cache.get(key, lambda: self.inner.get(key))

    # --- the rest of the Storage protocol goes straight through ---

    def put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        self.inner.put(key, data, content_type, metadata=metadata)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        # Only outputs are ever deleted; cached sources are content-addressed, never changed.
        self.inner.delete(key)

    def url(self, key: str, expires_in: int) -> str:
        return self.inner.url(key, expires_in)

    def check(self) -> None:
        self.inner.check()
