"""A byte-bounded LRU whose concurrent misses for one key compute once.

The worker's caches (fetched source bytes, worker/source_cache.py; prepared inputs,
worker/prepared_cache.py) are filled by the io pool, where the jobs of one batch run side by
side and, sharing one photo, all miss at once: the first computes, the others wait for it.
A failed computation is not kept: its waiters fail with it, the next lookup computes again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlightLRU(Generic[K, V]):
    """Values by key, at most ``max_bytes`` of them by ``sizeof``, least recently used out
    first; 0 keeps nothing (every lookup computes). ``on_lookup`` is told hit or miss."""

    def __init__(
        self,
        max_bytes: int,
        sizeof: Callable[[V], int],
        on_lookup: Callable[[bool], None] = lambda hit: None,
    ) -> None:
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._on_lookup = on_lookup  # called with hit=True/False (a metric)
        self._cache: LRUCache[K, V] = LRUCache(maxsize=max(1, max_bytes), getsizeof=sizeof)
        self._flights: dict[K, Future[V]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K, compute: Callable[[], V]) -> V:
        """The value kept for ``key``, else the one being computed, else ``compute()``."""
        if self.max_bytes <= 0:
            return compute()
        found, owner = self._lookup(key)
        self._on_lookup(not owner)
        if not isinstance(found, Future):
            return found
        return self._compute(key, found, compute) if owner else found.result()

    def _lookup(self, key: K) -> tuple[V | Future[V], bool]:
        """Under the lock: the kept value, else the flight to wait for and whether this
        caller owns it (a flight of another thread serves this caller too: a hit)."""
        with self._lock:
            if key in self._cache:
                self.hits += 1
                return self._cache[key], False  # reading it makes it the most recent
            flight = self._flights.get(key)
            if flight is not None:
                self.hits += 1
                return flight, False
            self.misses += 1
            self._flights[key] = flight = Future()
            return flight, True

    def _compute(self, key: K, flight: Future[V], compute: Callable[[], V]) -> V:
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                del self._flights[key]
            flight.set_exception(e)  # the waiters fail like the computation did
            raise
        with self._lock:
            if self._sizeof(value) <= self.max_bytes:  # cachetools refuses larger ones
                self._cache[key] = value
            del self._flights[key]
        flight.set_result(value)
        return value
