"""The decoded pixels in flight: a request reserves its pixels (read from headers) before decoding.

Compressed images are small and decoded ones are large (a 5000x5000 one-bit PNG of a few kilobytes
decodes to 75 MB of RGB). Requests reserve what they will decode, and one that does not fit what is
left is refused at once rather than decoded into memory that is not there.
"""

from __future__ import annotations

import threading


class PixelBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._used

    def reserve(self, pixels: int) -> bool:
        """Take ``pixels`` if they fit in what is left; False (nothing taken) if not."""
        with self._lock:
            if self._used + pixels > self.limit:
                return False
            self._used += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self._used -= pixels
