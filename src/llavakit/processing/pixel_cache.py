"""Media preprocessed once: a bounded LRU cache of the processor's output for each image or video.

A follow-up turn about the same image repeats the image in the conversation, and without this every
turn would decode the file again, resize and cut it into crops and normalise them; for a large photo
that costs far more than the vision tower. ``LlavaProcessor`` (its ``pixel_cache``) asks this cache
before opening a medium, so every inference path (``Llava.prepare``, ``generate``, ``llavakit chat``,
``llavakit serve``) skips that work for a medium it has seen.

**What is stored**: the medium's ``VisualItem`` (its geometry: kind, size, grid) and its crops, the
(crops, 3, S, S) float32 array the processor made, read-only. Callers get a read-only view (numpy
refuses to make it writable again), and the processor's batch is a concatenated copy, so nobody can
change an entry.

**The key** is (kind, multi-image, visual settings, content):

- *content*: SHA-256 of the medium's encoded bytes as received (the file's bytes, the data URL's
  decoded payload, the downloaded body), before any decoding. Hashing a few megabytes is far cheaper
  than decoding them. The hash is cryptographic because a server shares the cache among its
  clients: a client must not be able to craft a file that collides with another client's.
- *visual settings*: the whole ``VisualConfig`` (crop size, AnyRes pinpoints, image modes, mean
  and std, resampling, video frames, the pixel limit...): every setting the processor reads. Keying
  on the whole section rather than a list of fields means a setting added later cannot be forgotten.
- *multi-image*: an image among several may take another mode than an image alone.

A medium given already decoded (a PIL image, a list of frames) has no encoded bytes and is not
cached.

**Safety**: a medium is stored only after the processor opened it with every check (the pixel limit
on the header before decoding, truncation, zero size); the pixel limit is in the key, so a hit is a
medium that passed the same checks. A server still reads each request's headers (format, per-image
pixels) before asking, so what it refuses is refused whether cached or not.

**Bounded** by ``max_bytes`` of crops (``utils.lru.ByteLRU``, the table the feature cache uses too),
least recently used first out; thread-safe. Preprocessing runs outside the lock: two threads missing
the same medium at once both make it, and the second store replaces the first (equal arrays).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llavakit.config import VisualConfig
from llavakit.layout import VisualItem
from llavakit.utils.lru import ByteLRU


@dataclass(frozen=True)
class Encoded:
    """A medium's encoded bytes as received, with the decoder that turns them into pixels.

    For callers that must decode with their own checks (the server: only PNG, JPEG and WebP, headers
    read first): ``decode()`` gives a PIL image (an image) or a list of frames (a video), and runs
    only when the cache does not hold the medium.
    """

    data: bytes
    decode: Callable[[], Any]


@dataclass(frozen=True)
class PixelCacheStats:
    hits: int  # media served from the cache (no decoding, no preprocessing)
    misses: int  # media decoded and preprocessed
    evictions: int  # entries dropped to stay within max_bytes
    entries: int
    bytes: int  # bytes of the stored crops
    max_bytes: int
    key_seconds: float  # time spent reading and hashing encoded bytes (the cache's own overhead)


class PixelCache:
    """Bounded (bytes), least-recently-used, thread-safe cache of preprocessed media."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"pixel cache: max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._table: ByteLRU[tuple[VisualItem, np.ndarray]] = ByteLRU(self.max_bytes, lambda entry: entry[1].nbytes)
        self._lock = threading.Lock()  # the counters
        self._hits = self._misses = 0
        self._key_seconds = 0.0

    def key(self, kind: str, data: bytes, visual: VisualConfig, multi_image: bool) -> Hashable:
        started = time.perf_counter()
        digest = hashlib.sha256(data).digest()
        key = (kind, multi_image, visual.model_dump_json(), digest)
        with self._lock:
            self._key_seconds += time.perf_counter() - started
        return key

    def get_or_make(self, key: Hashable, make: Callable[[], tuple[VisualItem, np.ndarray]]
                    ) -> tuple[VisualItem, np.ndarray]:
        """The entry under ``key``, or ``make()``'s result, stored; the crops come back read-only.
        ``make`` returns crops nobody else holds (the processor's are freshly made)."""
        found = self._table.get(key)
        with self._lock:
            if found is None:
                self._misses += 1
            else:
                self._hits += 1
        if found is None:
            item, crops = make()
            crops.flags.writeable = False
            found = (item, crops)
            self._table.put(key, found)
        item, crops = found
        return item, crops.view()  # a view of a read-only array cannot be made writable

    def clear(self) -> None:
        """Forget every entry; counters are kept."""
        self._table.clear()

    def stats(self) -> PixelCacheStats:
        with self._lock:
            hits, misses, key_seconds = self._hits, self._misses, self._key_seconds
        return PixelCacheStats(hits, misses, self._table.evictions, len(self._table), self._table.bytes,
                               self.max_bytes, key_seconds)

    def __len__(self) -> int:
        return len(self._table)


def encoded_bytes(source: Any) -> bytes | None:
    """The encoded bytes of a medium given as a file path, bytes or :class:`Encoded`; None for a
    decoded medium (PIL image, frames) or a path that is not a readable file (the decoder names
    the error)."""
    if isinstance(source, Encoded):
        return source.data
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes()
        except OSError:
            return None
    return None
