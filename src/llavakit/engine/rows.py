"""One sequence being generated: one choice of one request, its text stream and its finish."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llavakit.engine.requests import Request
from llavakit.engine.sampling import SamplingSettings
from llavakit.engine.text import TextStream


@dataclass(eq=False)  # compared by identity
class Row:
    request: Request
    choice: int
    settings: SamplingSettings
    stream: TextStream
    generator: torch.Generator | None
    filled: int = 0  # cache positions holding this row's keys (prompt + fed answer tokens)
    slot: int = 0  # its cache slot
    prompt_embeds: torch.Tensor | None = None  # kept when the engine reuses prefixes
    last_token: int = 0  # the token to feed at the next decode step
    finish_reason: str | None = None  # "stop", "length" or "cancelled"

    @property
    def token_ids(self) -> list[int]:
        return self.stream.token_ids

    @property
    def text(self) -> str:
        return self.stream.text

    def accept(self, token: int) -> bool:
        """Record a generated token; True when the row has ended."""
        self._emit(self.stream.push(token))
        self.last_token = token
        if self.stream.stopped:
            self.finish("stop")
        elif len(self.token_ids) >= self.settings.max_new_tokens:
            self.finish("length")
        return self.finish_reason is not None

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self._emit(self.stream.finish())
            self.finish_reason = reason
            self.request.listener.on_finish(self.choice, reason, list(self.token_ids))

    def _emit(self, delta: str) -> None:
        if delta:
            self.request.listener.on_text(self.choice, delta)
