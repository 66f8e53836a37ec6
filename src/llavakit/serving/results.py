"""Request results, from the engine thread to the request's event loop.

The engine calls the listener methods; each puts an event on an asyncio queue through
``call_soon_threadsafe``. A listener never raises into the engine: when the loop is gone (server
stopping) the event is dropped, nobody is waiting for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from llavakit.serving.errors import APIError


@dataclass
class TextEvent:
    choice: int
    delta: str


@dataclass
class FinishEvent:
    choice: int
    reason: str
    token_ids: list[int]


_DEADLINE = object()  # put on the queue when the answer's time is up


class ResultQueue:
    """A JobListener whose events an async handler reads with :meth:`events`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, choices: int):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._open = choices

    def _put(self, event: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed
            pass

    def on_text(self, choice: int, delta: str) -> None:
        self._put(TextEvent(choice, delta))

    def on_finish(self, choice: int, reason: str, token_ids: list[int]) -> None:
        self._put(FinishEvent(choice, reason, token_ids))

    def on_error(self, error: Exception) -> None:
        self._put(error)

    def abort(self, error: APIError) -> None:
        """End the answer with ``error`` (from the event loop's thread): the reader raises it next."""
        self._queue.put_nowait(error)

    async def events(self, deadline: float, cancel: Callable[[], None]) -> AsyncIterator[TextEvent | FinishEvent]:
        """Events until every choice has finished; a timeout or a failed batch raises APIError."""
        # The deadline is an event of the queue, not a timeout around each read: on the older Pythons this
        # project supports, asyncio.wait_for returns the read event when its caller is cancelled in the
        # same loop step, so the handler of a client that left kept reading to the answer's end. The
        # check before each read covers a deadline passed while events were still queued.
        timer = self._loop.call_at(deadline, self._queue.put_nowait, _DEADLINE)
        try:
            while self._open:
                event = _DEADLINE if self._loop.time() >= deadline else await self._queue.get()
                if event is _DEADLINE:
                    cancel()
                    raise APIError(504, "the request did not finish within the server's time limit "
                                        "(--request-timeout); try a smaller max_tokens", "request_timeout")
                if isinstance(event, APIError):
                    raise event
                if isinstance(event, Exception):
                    raise APIError(500, f"generation failed ({type(event).__name__}); the request was not answered",
                                   "generation_failed")
                if isinstance(event, FinishEvent):
                    self._open -= 1
                yield event
        finally:
            timer.cancel()
