"""Per-row sampling: every sequence of a batch keeps its own settings and random generator.

A row's next token depends only on its own logits, settings and generator, so requests with
different temperatures, top-p / top-k, repetition penalties or seeds run in one batch and each gets
the tokens it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SamplingSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")

    def with_seed(self, seed: int | None) -> SamplingSettings:
        return SamplingSettings(self.max_new_tokens, self.temperature, self.top_p, self.top_k,
                                self.repetition_penalty, seed)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator for a seeded row; None (the global RNG) when no seed is asked for."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL repetition penalty per row: ``seen`` (B, V) marks tokens of the row's prompt and output."""
    penalized = torch.where(logits < 0, logits * penalty[:, None], logits / penalty[:, None])
    return torch.where(seen, penalized, logits)


def filter_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the k largest logits of each row (ties at the k-th kept); k = 0 keeps all."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = torch.sort(logits, dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of each row's tokens whose probability reaches top_p; 1 keeps all."""
    ordered, order = torch.sort(logits, dim=-1, descending=True)
    probs = ordered.softmax(-1)
    drop = (probs.cumsum(-1) - probs >= top_p[:, None]) & (top_p < 1.0)[:, None]
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


class BatchSampler:
    """Chooses the next token of each row from its logits, with that row's settings."""

    def __init__(self, settings: Sequence[SamplingSettings], generators: Sequence[torch.Generator | None],
                 device: torch.device | str = "cpu"):
        if len(settings) != len(generators):
            raise ValueError(f"{len(settings)} settings but {len(generators)} generators")
        self.settings = list(settings)
        self.generators = list(generators)
        self.temperature = torch.tensor([s.temperature for s in settings], dtype=torch.float32, device=device)
        self.top_p = torch.tensor([s.top_p for s in settings], dtype=torch.float32, device=device)
        self.top_k = torch.tensor([s.top_k for s in settings], dtype=torch.long, device=device)
        self.penalty = torch.tensor([s.repetition_penalty for s in settings], dtype=torch.float32, device=device)
        self.any_penalty = any(s.repetition_penalty != 1.0 for s in settings)
        self.sampled = [i for i, s in enumerate(settings) if s.temperature > 0]

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """(B, V) logits of the last position, (B, V) bool seen tokens -> (B,) next tokens."""
        logits = logits.float()
        if self.any_penalty:
            logits = penalize(logits, seen, self.penalty)
        tokens = logits.argmax(-1)
        if not self.sampled:
            return tokens
        rows = torch.tensor(self.sampled, device=logits.device)
        scaled = logits[rows] / self.temperature[rows, None]
        if bool((self.top_k[rows] > 0).any()):
            scaled = filter_top_k(scaled, self.top_k[rows])
        if bool((self.top_p[rows] < 1.0).any()):
            scaled = filter_top_p(scaled, self.top_p[rows])
        probs = scaled.softmax(-1)
        # One draw per row from the row's own generator: what a row gets never depends on its neighbours.
        for position, row in enumerate(self.sampled):
            tokens[row] = torch.multinomial(probs[position:position + 1], 1, generator=self.generators[row])[0, 0]
        return tokens
