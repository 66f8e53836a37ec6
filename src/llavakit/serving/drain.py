"""Requests in flight, and the drain when the server stops.

On SIGTERM the server keeps listening while it drains: new chat requests and ``/health`` get 503
(a load balancer sees the instance leave), requests in flight get until the drain's timeout to
finish, and those still running then are cut with an OpenAI error object (an SSE error event then
``[DONE]`` on a stream) instead of a dropped connection. Only then does the HTTP server stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from llavakit.serving.errors import APIError
from llavakit.serving.results import ResultQueue

log = logging.getLogger("llavakit.serving")


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry on another instance", "shutting_down",
                    headers={"Connection": "close"})


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._requests = 0  # handlers running, and streams not yet finished
        self._results: set[ResultQueue] = set()

    @property
    def in_flight(self) -> int:
        return self._requests

    @contextmanager
    def request(self) -> Iterator[None]:
        """Counts one request while it is prepared and answered."""
        self._requests += 1
        try:
            yield
        finally:
            self._requests -= 1

    @contextmanager
    def answering(self, results: ResultQueue) -> Iterator[None]:
        """A submitted job whose results may be cut by the drain."""
        self._results.add(results)
        try:
            yield
        finally:
            self._results.discard(results)

    async def tracked_stream(self, results: ResultQueue, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """A stream counted as in flight until its last chunk (its handler has returned long before)."""
        with self.request(), self.answering(results):
            async for chunk in chunks:
                yield chunk

    async def run(self, timeout: float, on_cut=None) -> None:
        """Refuse new requests; wait up to ``timeout`` s for those in flight; cut the rest."""
        self.draining = True
        deadline = time.monotonic() + timeout
        log.info("draining %d request(s) for up to %g s", self._requests, timeout)
        while self._requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._requests:
            log.warning("cutting %d request(s) still in flight after the %g s drain", self._requests, timeout)
            if on_cut is not None:
                on_cut()
            for results in list(self._results):
                results.abort(shutting_down())
            # Let the cut handlers write their error responses before the HTTP server stops.
            settle = time.monotonic() + 5
            while self._requests and time.monotonic() < settle:
                await asyncio.sleep(0.05)
