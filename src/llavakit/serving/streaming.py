"""Python entry points over the engine: per-conversation settings, and streaming.

``generate_batch`` answers many conversations together, each with its own sampling settings
(``Llava.generate`` shares one setting across them). ``stream`` yields an answer's text as it is
generated; closing the iterator early (``break``, Ctrl-C) stops the generation.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

from llavakit.api import Conversation, Generation, Llava
from llavakit.engine import Request, SamplingSettings

_END = object()


def generate_batch(
    llava: Llava,
    conversations: Sequence[Conversation],
    settings: SamplingSettings | Sequence[SamplingSettings] | None = None,
    stop: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[Generation]:
    """Answer every conversation together; ``on_text(index, delta)`` streams the text."""
    settings = settings or SamplingSettings()
    per_row = [settings] * len(conversations) if isinstance(settings, SamplingSettings) else list(settings)
    if len(per_row) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(per_row)} sampling settings")
    return llava.generate_many([llava.prepare([c]) for c in conversations], per_row, stop, on_text)


class _Deltas:
    """A request listener that hands text deltas (and an error) to a queue."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def on_text(self, choice: int, delta: str) -> None:
        self.queue.put(delta)

    def on_finish(self, choice: int, reason: str, token_ids: list[int]) -> None:
        pass

    def on_error(self, error: Exception) -> None:
        self.queue.put(error)


def stream(
    llava: Llava, conversation: Conversation, settings: SamplingSettings | None = None, stop: Sequence[str] = ()
) -> Iterator[str]:
    """Text deltas of one answer as they are generated (the engine runs in a background thread)."""
    settings = settings or SamplingSettings()
    inputs = llava.prepare([conversation])  # input errors surface here, in the caller's thread
    deltas = _Deltas()
    request = Request(inputs, settings, deltas, stop=list(stop))

    def work() -> None:
        try:
            llava.engine.run([request])
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            deltas.queue.put(error)
        finally:
            deltas.queue.put(_END)

    worker = threading.Thread(target=work, name="llavakit-stream", daemon=True)
    worker.start()
    try:
        while (item := deltas.queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        request.cancel()  # the consumer stopped early: the row ends as "cancelled" at the next step
        worker.join()
