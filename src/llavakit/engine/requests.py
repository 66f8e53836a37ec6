"""What callers hand the engine: a prepared prompt, its sampling settings and a listener for results."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llavakit.engine.sampling import SamplingSettings
from llavakit.processing.processor import ModelInputs


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests."""


class RequestTooLarge(ValueError):
    """A request needs more KV cache than one row of the engine holds: it could never run."""


class RequestListener(Protocol):
    """Receives a request's results, from the thread that runs the engine."""

    def on_text(self, choice: int, delta: str) -> None: ...
    def on_finish(self, choice: int, reason: str, token_ids: list[int]) -> None: ...
    def on_error(self, error: Exception) -> None: ...


@dataclass
class Request:
    """One prompt answered ``n`` times; finish reasons are "stop", "length" or "cancelled"."""

    inputs: ModelInputs  # a batch of one prompt
    settings: SamplingSettings
    listener: RequestListener
    n: int = 1
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # end tokens are generated as text; only the limit or a stop string ends a row
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)
    finished: threading.Event = field(default_factory=threading.Event)  # every choice ended, or the request failed

    def __post_init__(self) -> None:
        if self.inputs.input_ids.shape[0] != 1:
            raise ValueError(f"a request holds one prompt, got a batch of {self.inputs.input_ids.shape[0]}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self._open_choices = self.n

    def finish_choice(self) -> None:
        """One choice has ended (the engine calls this after the listener's on_finish)."""
        self._open_choices -= 1
        if self._open_choices <= 0:
            self.finished.set()

    def fail(self) -> None:
        self.finished.set()

    @property
    def prompt_length(self) -> int:
        return int(self.inputs.input_ids.shape[1])

    @property
    def cache_tokens(self) -> int:
        """Positions one of its rows fills: the prompt, and every answer token but the last."""
        return self.prompt_length + max(self.settings.max_new_tokens - 1, 0)

    def cancel(self) -> None:
        """Stop generating for this request (client gone or timed out); its rows end as "cancelled"."""
        self.cancelled.set()

    def choice_settings(self, choice: int) -> SamplingSettings:
        # Choice i samples with seed + i: choice 0 equals the same request with n = 1.
        return self.settings.with_seed(None if self.settings.seed is None else self.settings.seed + choice)
