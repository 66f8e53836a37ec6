"""The engine's limits and options, checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 32  # sequences decoded together (a request with n choices counts n)
    max_prefill_tokens: int = 4096  # prompt tokens prefilled between two decode steps (longer prompts go in chunks)
    # KV cache tokens, all rows together; each of the max_rows slots holds max_cache_tokens // max_rows.
    # None: the cache is sized to the longest request seen so far (grown, never shrunk).
    max_cache_tokens: int | None = None
    # "continuous": rows leave and requests join at every decode step; "static": a batch runs to its end
    # while new requests wait (the baseline the benchmarks compare against).
    schedule: Literal["continuous", "static"] = "continuous"
    compile: bool | Literal["auto"] = "auto"  # torch.compile the decode step ("auto": a server on a GPU)
    feature_cache: object | None = None  # passed to model.embed(..., feature_cache=...) when set
    # keep each finished answer's keys (prompt and answer) in its freed slot until the slot is needed; a
    # later prompt that starts with the same tokens and media reuses them (a chat's next turn)
    reuse_prefixes: bool = False
    max_queued: int = 256  # requests waiting; more are refused (QueueFull)
    batch_window_s: float = 0.0  # static schedule: how long the first request of a batch waits for company

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_prefill_tokens", "max_queued"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_cache_tokens is not None and self.max_cache_tokens < self.max_rows * 2:
            raise ValueError(f"max_cache_tokens ({self.max_cache_tokens}) must give each of the max_rows "
                             f"({self.max_rows}) rows at least 2 tokens")
        if self.schedule not in ("continuous", "static"):
            raise ValueError(f"schedule must be 'continuous' or 'static', got {self.schedule!r}")
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"compile must be true, false or 'auto', got {self.compile!r}")
        if self.batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, got {self.batch_window_s}")

    @property
    def slot_length(self) -> int | None:
        """Tokens (prompt + answer) one row can hold, or None when the cache grows to fit."""
        return None if self.max_cache_tokens is None else self.max_cache_tokens // self.max_rows
