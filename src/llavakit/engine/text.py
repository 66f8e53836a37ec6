"""Token ids -> text deltas for streaming, with stop strings.

The text of a row is always the decode of all its tokens so far (special tokens skipped), cut at
the first stop string, so streamed deltas concatenate to exactly the text a non-streamed answer
gets. Two things are held back until they are settled: a trailing partial UTF-8 character (byte-level
BPE decodes it as U+FFFD) and a tail that could still grow into a stop string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

REPLACEMENT = "\ufffd"


def stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """Incremental detokenizer of one generated sequence."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), end_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stop if s]
        self.end_ids = set(end_ids)
        self.token_ids: list[int] = []
        self.text = ""  # the settled text: everything emitted so far
        self.stopped = False  # a stop string or an end token was produced

    def push(self, token: int) -> str:
        """Add one generated token; returns the new settled text (often empty)."""
        if self.stopped:
            raise RuntimeError("push after the sequence stopped")
        self.token_ids.append(token)
        if token in self.end_ids:
            self.stopped = True
            return self._settle(self._decoded(), final=True)
        return self._settle(self._decoded(), final=False)

    def finish(self) -> str:
        """The sequence ends (length limit or cancelled): release whatever was held back."""
        return "" if self.stopped else self._settle(self._decoded(), final=True)

    def _decoded(self) -> str:
        # Decoding everything each step keeps deltas consistent with the final text; it costs
        # O(length) per token, which is small next to a forward pass for answers of a few thousand tokens.
        ids = [t for t in self.token_ids if t not in self.end_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _settle(self, text: str, final: bool) -> str:
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            text, final, self.stopped = text[:cut], True, True
        if not final:
            end = len(text)
            while end > len(self.text) and text[end - 1] == REPLACEMENT:
                end -= 1
            end -= stop_prefix_length(text[len(self.text):end], self.stops)
            text = text[:end]
        if not text.startswith(self.text):
            # A tokenizer whose decode rewrites earlier text (e.g. clean-up of spaces) cannot be
            # streamed exactly; keep what was sent and continue after it rather than repeating text.
            return ""
        delta, self.text = text[len(self.text):], text
        return delta
