"""Autoregressive decoding with a KV cache, for batches of left-padded prompts.

Visual features are computed once, in the prefill; each decode step feeds one token per sequence.
Positions count real tokens only (left padding does not shift them), so a prompt gives the same
tokens alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from llavakit.model.llava import LlavaForCausalLM
from llavakit.processing.processor import ModelInputs


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


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float, real: torch.Tensor | None = None
) -> torch.Tensor:
    """CTRL-style penalty on every token already in the sequence (prompt and output).

    ``real`` (B, L) marks real tokens: left padding must not be penalised, or a padded row would
    answer differently in a batch than alone.
    """
    weights = torch.ones_like(seen, dtype=logits.dtype) if real is None else real.to(logits.dtype)
    occurrences = torch.zeros_like(logits).scatter_add_(1, seen, weights)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(occurrences > 0, penalised, logits)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor, history: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None,
    real: torch.Tensor | None = None,
) -> torch.Tensor:
    logits = logits.float()
    if settings.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, settings.repetition_penalty, real)
    if settings.temperature == 0:
        return logits.argmax(-1)
    logits = filter_top_k_top_p(logits / settings.temperature, settings.top_k, settings.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_ids(
    model: LlavaForCausalLM,
    inputs: ModelInputs,
    settings: SamplingSettings,
    eos_token_ids: Iterable[int],
    pad_token_id: int,
    on_step: Callable[[torch.Tensor], bool | None] | None = None,
) -> list[list[int]]:
    """New token ids per sequence (EOS included when produced).

    ``on_step`` receives the tokens of each step (B,) and may return True to stop early (the
    streaming and stop-string logic lives in the caller).
    """
    device = model.device
    inputs = inputs.to(device)
    eos = torch.tensor(sorted(set(eos_token_ids)), device=device, dtype=torch.long)
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    mask = inputs.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    embeds = model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items)
    out = model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
        use_cache=True, logits_to_keep=1,
    )
    history = inputs.input_ids
    finished = torch.zeros(history.shape[0], dtype=torch.bool, device=device)
    produced: list[torch.Tensor] = []
    last_position = positions[:, -1:]
    for _ in range(settings.max_new_tokens):
        token = next_tokens(out.logits[:, -1], history, settings, generator, mask)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        produced.append(token)
        history = torch.cat((history, token[:, None]), dim=1)
        finished |= torch.isin(token, eos)
        if (on_step is not None and on_step(token)) or bool(finished.all()):
            break
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        last_position = last_position + 1
        out = model.language_model(
            input_ids=token[:, None], attention_mask=mask, position_ids=last_position, past_key_values=cache,
            use_cache=True,
        )
    return trim_after_eos(torch.stack(produced, dim=1) if produced else history[:, :0], eos)


def trim_after_eos(tokens: torch.Tensor, eos: torch.Tensor) -> list[list[int]]:
    sequences = []
    for row in tokens.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos.tolist()), len(row))
        sequences.append(row[:end])
    return sequences
