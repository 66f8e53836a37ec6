"""Batched decoding with a KV cache and per-row state: the loop under the server and the chat CLI.

Prompts of different lengths are left-padded into one batch; positions count real tokens only, so
a row's tokens do not depend on its neighbours. Each prompt is prefilled once (visual features
computed once) and its cache is then copied for each of its rows (the ``n`` choices of a request).
A row leaves the batch, and the cache, as soon as it ends (end token, stop string, length limit or
cancellation), so short answers do not pay for long ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from llavakit.model.generation import SamplingSettings
from llavakit.model.llava import LlavaForCausalLM
from llavakit.processing.processor import ModelInputs
from llavakit.serving.sampling import BatchSampler
from llavakit.serving.text import TextStream


@dataclass
class Row:
    """One sequence being generated: one choice of one request."""

    prompt: int  # index of its prompt in the batch's ModelInputs
    settings: SamplingSettings
    stream: TextStream
    generator: torch.Generator | None = None
    on_text: Callable[[Row, str], None] = lambda row, delta: None  # each non-empty text delta
    on_finish: Callable[[Row], None] = lambda row: None  # once, after the last delta
    cancelled: Callable[[], bool] = lambda: False
    finish_reason: str | None = None  # "stop", "length" or "cancelled"
    data: dict = field(default_factory=dict)  # the caller's bookkeeping (request, choice index)

    @property
    def token_ids(self) -> list[int]:
        return self.stream.token_ids

    @property
    def text(self) -> str:
        return self.stream.text

    def accept(self, token: int) -> bool:
        """Record a generated token; True when the row has ended."""
        self._emit(self.stream.push(token))
        if self.stream.stopped:
            self.finish("stop")
        elif len(self.token_ids) >= self.settings.max_new_tokens:
            self.finish("length")
        return self.finish_reason is not None

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self._emit(self.stream.finish())
            self.finish_reason = reason
            self.on_finish(self)

    def _emit(self, delta: str) -> None:
        if delta:
            self.on_text(self, delta)


def collate(parts: Sequence[ModelInputs], pad_token_id: int) -> ModelInputs:
    """Several prepared prompts -> one left-padded batch (what the processor gives for them together)."""
    width = max(p.input_ids.shape[1] for p in parts)
    ids = torch.cat([F.pad(p.input_ids, (width - p.input_ids.shape[1], 0), value=pad_token_id) for p in parts])
    mask = torch.cat([F.pad(p.attention_mask, (width - p.attention_mask.shape[1], 0), value=0) for p in parts])
    pixels = [p.pixel_values for p in parts if p.pixel_values is not None]
    items = [item for p in parts for item in p.visual_items]
    prompt_tokens = [count for p in parts for count in p.prompt_tokens]
    return ModelInputs(ids, mask, torch.cat(pixels) if pixels else None, items, prompt_tokens)


@torch.no_grad()
def generate_rows(model: LlavaForCausalLM, inputs: ModelInputs, rows: Sequence[Row]) -> None:
    """Generate every row to its end; rows report text and their finish through their callbacks."""
    active = [row for row in rows if not _ends_before_start(row)]
    if not active:
        return
    device = model.device
    inputs = inputs.to(device)
    mask = inputs.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    embeds = model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items)
    out = model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
        use_cache=True, logits_to_keep=1,
    )
    # Rows share their prompt's prefill: copy the cache and the last logits once per row.
    index = torch.tensor([row.prompt for row in active], device=device)
    cache.batch_select_indices(index)
    logits, mask, position = out.logits[index, -1], mask[index], positions[index, -1:]
    sampler = BatchSampler([r.settings for r in active], [r.generator for r in active], device)
    vocab = logits.shape[-1]
    seen = presence(inputs.input_ids, inputs.attention_mask, vocab)[index] if sampler.any_penalty else None
    while True:
        tokens = sampler(logits, seen)
        keep = [i for i, (row, token) in enumerate(zip(active, tokens.tolist())) if not row.accept(token)]
        keep = [i for i in keep if not _cancel(active[i])]
        if not keep:
            return
        if len(keep) < len(active):
            kept = torch.tensor(keep, device=device)
            cache.batch_select_indices(kept)
            tokens, mask, position = tokens[kept], mask[kept], position[kept]
            seen = seen[kept] if seen is not None else None
            sampler = sampler.select(keep)
            active = [active[i] for i in keep]
        if seen is not None:
            seen[torch.arange(len(active), device=device), tokens] = True
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        position = position + 1
        out = model.language_model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=position, past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]


def presence(input_ids: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, V) bool: the tokens of each prompt, padding excluded (the repetition penalty's history)."""
    seen = torch.zeros(input_ids.shape[0], vocab, dtype=torch.bool, device=input_ids.device)
    for row in range(input_ids.shape[0]):
        seen[row, input_ids[row][mask[row].bool()]] = True
    return seen


def _ends_before_start(row: Row) -> bool:
    if row.cancelled():
        row.finish("cancelled")
    elif row.settings.max_new_tokens == 0:
        row.finish("length")
    return row.finish_reason is not None


def _cancel(row: Row) -> bool:
    if row.cancelled():
        row.finish("cancelled")
        return True
    return False

