"""Python entry points over the batched decoder: per-conversation settings, and streaming.

``generate_batch`` answers many conversations in one batch, each with its own sampling settings
(``Llava.generate`` shares one setting across the batch). ``stream`` yields an answer's text as it
is generated; closing the iterator early (``break``, Ctrl-C) stops the generation.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

from llavakit.api import Conversation, Generation, Llava
from llavakit.model.generation import SamplingSettings
from llavakit.serving.decode import Row, generate_rows
from llavakit.serving.sampling import make_generator
from llavakit.serving.text import TextStream

_END = object()


def _rows(llava: Llava, settings: Sequence[SamplingSettings], stop: Sequence[str], **callbacks) -> list[Row]:
    device = llava.model.device
    return [Row(i, s, TextStream(llava.tokenizer, stop, llava.eos_token_ids), make_generator(s.seed, device),
                **callbacks) for i, s in enumerate(settings)]


def generate_batch(
    llava: Llava,
    conversations: Sequence[Conversation],
    settings: SamplingSettings | Sequence[SamplingSettings] | None = None,
    stop: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[Generation]:
    """Answer every conversation in one batch; ``on_text(index, delta)`` streams the text."""
    settings = settings or SamplingSettings()
    per_row = [settings] * len(conversations) if isinstance(settings, SamplingSettings) else list(settings)
    if len(per_row) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(per_row)} sampling settings")
    inputs = llava.prepare(conversations)
    callbacks = {"on_text": (lambda row, delta: on_text(row.prompt, delta))} if on_text else {}
    rows = _rows(llava, per_row, stop, **callbacks)
    generate_rows(llava.model, inputs, rows)
    return [Generation(row.text, list(row.token_ids), prompt, "stop" if row.finish_reason == "stop" else "length")
            for row, prompt in zip(rows, inputs.prompt_tokens)]


def stream(
    llava: Llava, conversation: Conversation, settings: SamplingSettings | None = None, stop: Sequence[str] = ()
) -> Iterator[str]:
    """Text deltas of one answer as they are generated (the model runs in a background thread)."""
    settings = settings or SamplingSettings()
    inputs = llava.prepare([conversation])  # input errors surface here, in the caller's thread
    deltas: queue.Queue = queue.Queue()
    stopped = threading.Event()
    (row,) = _rows(llava, [settings], stop, on_text=lambda _, delta: deltas.put(delta), cancelled=stopped.is_set)

    def work() -> None:
        try:
            generate_rows(llava.model, inputs, [row])
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            deltas.put(error)
        finally:
            deltas.put(_END)

    worker = threading.Thread(target=work, name="llavakit-stream", daemon=True)
    worker.start()
    try:
        while (item := deltas.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()  # the consumer stopped early: the row ends as "cancelled" at its next step
        worker.join()
