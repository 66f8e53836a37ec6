"""A byte-bounded, least-recently-used, thread-safe table: the storage of every media cache.

The visual feature cache (``model/feature_cache.py``), the preprocessed pixel cache
(``processing/pixel_cache.py``) and training's decoded-media cache (``data/media.py``) differ in
what they key and store, not in how they keep it: all
hold values whose sizes are known, must never exceed a byte budget, drop the least recently used
entry first, and are shared by a server's threads. This is that one implementation.

A value larger than the whole budget is not stored (it would evict everything and still not fit).
One lock guards the table; computing a value happens outside it, in the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """At most ``max_bytes`` of values (sized by ``size_of``), least recently used dropped first."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: V) -> bool:
        """Store ``value`` (replacing one under the same key), evicting the least recently used
        entries until it fits; False when it is larger than the whole budget (not stored)."""
        size = int(self._size_of(value))
        if size > self.max_bytes:
            return False
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            while self._entries and self._bytes + size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1
            self._entries[key] = (value, size)
            self._bytes += size
        return True

    def discard_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate`` (not counted as evictions); how many."""
        with self._lock:
            doomed = [key for key in self._entries if predicate(key)]
            for key in doomed:
                self._bytes -= self._entries.pop(key)[1]
        return len(doomed)

    def keys(self) -> list[Hashable]:
        """The stored keys, least recently used first (a snapshot)."""
        with self._lock:
            return list(self._entries)

    def values(self) -> list[V]:
        """The stored values, least recently used first (a snapshot)."""
        with self._lock:
            return [value for value, _ in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def evictions(self) -> int:
        with self._lock:
            return self._evictions

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
