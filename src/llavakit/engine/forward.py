"""The language model's forward passes over the slot cache: prefill chunks and decode steps.

Masks are built here, per row, from each query token's position: a row attends to its own slot's
positions up to the query's (positions count the row's tokens, there is no padding), so a row's
logits never depend on the other rows of the batch. The decode step can run compiled: then every
call has one of a few fixed shapes (the batch padded to a bucket of rows, the mask and the cache
view as wide as a slot) and reads its inputs from buffers that keep their address.
"""

from __future__ import annotations

import logging
import time

import torch

from llavakit.engine.kv_cache import Plan, SlotCache

log = logging.getLogger("llavakit.engine")

SUPPORTED_ATTENTION = ("sdpa", "eager")


def row_buckets(max_rows: int) -> list[int]:
    """Batch sizes a compiled step is built for: powers of two, and the maximum."""
    sizes, size = [], 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    return [*sizes, max_rows]


class _DecodeInputs:
    """Fixed-address inputs of one compiled bucket, refilled in place before each call."""

    def __init__(self, rows: int, length: int, device: torch.device, plan_rows: slice):
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.slots = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.write = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.plan = Plan(plan_rows, length, self.slots, self.write)


class Forward:
    """Runs the language model of ``model`` with ``cache``; ``scratch`` is a slot no row decodes in."""

    def __init__(self, model, cache: SlotCache, scratch_slot: int, compile_step: bool):
        self.lm = model.language_model
        self.config = self.lm.config
        self.attention = getattr(self.config, "_attn_implementation", "sdpa") or "sdpa"
        if self.attention not in SUPPORTED_ATTENTION:
            raise ValueError(f"the engine supports attention implementations {', '.join(SUPPORTED_ATTENTION)}; "
                             f"this model uses {self.attention!r}")
        layer_types = getattr(self.config, "layer_types", None) or []
        self.sliding_window = getattr(self.config, "sliding_window", None) if "sliding_attention" in layer_types else None
        self.cache, self.scratch_slot = cache, scratch_slot
        self.device, self.dtype = cache.layers[0].keys.device, cache.layers[0].keys.dtype
        self.compiled = compile_step
        self._buckets: dict[int, _DecodeInputs] = {}
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on a GPU
        self._step = torch.compile(self._logits, dynamic=False, mode=mode) if compile_step else self._logits
        self.compile_seconds = 0.0

    # ---- masks ---------------------------------------------------------------------------------
    def _mask(self, positions: torch.Tensor, length: int):
        """(B, Q) query positions -> the (B, 1, Q, length) mask the attention implementation takes: each
        query sees its row's positions up to its own (a dict with a windowed mask when some layers slide)."""
        keys = torch.arange(length, device=positions.device)[None, None, :]
        allowed = (keys <= positions[:, :, None])[:, None]
        full = self._as_attention_mask(allowed)
        if self.sliding_window is None:
            return full
        window = allowed & (keys > positions[:, :, None] - self.sliding_window)[:, None]
        return {"full_attention": full, "sliding_attention": self._as_attention_mask(window)}

    def _as_attention_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        if self.attention == "eager":
            return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(self.dtype).min)
        return allowed

    # ---- prefill -------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, slot: int, start: int) -> torch.Tensor:
        """Write a chunk of one prompt's embeddings (1, C, H) at positions ``start..`` of ``slot``;
        the logits (1, V) after its last token."""
        chunk = embeds.shape[1]
        positions = torch.arange(start, start + chunk, device=self.device)[None]
        plan = Plan(slice(slot, slot + 1), start + chunk, torch.full_like(positions, slot), positions)
        out = self.lm(inputs_embeds=embeds, attention_mask=self._mask(positions, start + chunk),
                      position_ids=positions, cache=self.cache.plan(plan), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    # ---- decode --------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of rows 0..n-1 (row i lives in slot i) -> logits (n, V)."""
        rows = len(tokens)
        if self.compiled:
            return self._decode_compiled(tokens, positions)
        ids = torch.tensor(tokens, device=self.device)[:, None]
        where = torch.tensor(positions, device=self.device)[:, None]
        length = max(positions) + 1  # eager: attend over the filled part of the slots only
        plan = Plan(slice(0, rows), length, torch.arange(rows, device=self.device)[:, None], where)
        self.cache.plan(plan)
        return self._logits(ids, where, self._mask(where, length))

    def _decode_compiled(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        rows = len(tokens)
        bucket = next(size for size in row_buckets(self.cache.slots - 1) if size >= rows)
        inputs = self._buckets.get(bucket)
        first = inputs is None
        if first:
            inputs = self._buckets[bucket] = _DecodeInputs(bucket, self.cache.length, self.device, slice(0, bucket))
        padding = bucket - rows
        # rows beyond n are padding: they write to the scratch slot's last position, never read by a row
        inputs.ids.copy_(torch.tensor(tokens + [0] * padding, device=self.device)[:, None])
        inputs.positions.copy_(torch.tensor(positions + [0] * padding, device=self.device)[:, None])
        inputs.slots.copy_(torch.tensor(list(range(rows)) + [self.scratch_slot] * padding, device=self.device)[:, None])
        inputs.write.copy_(inputs.positions)
        inputs.write[rows:] = self.cache.length - 1
        self.cache.plan(inputs.plan)
        started = time.perf_counter()
        logits = self._step(inputs.ids, inputs.positions, self._mask(inputs.positions, self.cache.length))
        if first:
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            log.info("compiled the decode step for %d rows in %.1f s", bucket, seconds)
        return logits[:rows]

    def _logits(self, ids: torch.Tensor, positions: torch.Tensor, mask) -> torch.Tensor:
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True)
        return out.logits[:, -1]
