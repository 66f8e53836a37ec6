"""The language model's forward passes over the slot cache: prefill chunks and decode steps.

Masks are built here, per row, from each query token's position: a row attends to its own slot's
positions up to the query's (positions count the row's tokens, there is no padding inside a row),
so a row's logits never depend on the other rows of the batch. Query tokens that only pad a batch
(prefill chunks of different lengths, free slots among the decoding rows, the rows a compiled
bucket adds) write to the cache's scratch position, which no row reads.

The decode step can run compiled: then every call has one of a few fixed shapes (the batch padded
to a bucket of rows, the mask and the cache view as wide as a slot) and reads its inputs from
buffers that keep their address.
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
    """Fixed-address inputs of one compiled bucket, refilled in place (one copy) before each call."""

    def __init__(self, rows: int, length: int, device: torch.device):
        self.all = torch.zeros(4, rows, 1, dtype=torch.long, device=device)
        self.ids, self.positions, self.slots, self.write = self.all.unbind(0)
        self.plan = Plan(slice(0, rows), length, self.slots, self.write)


class Forward:
    """Runs the language model of ``model`` over ``cache`` (whose last slot and position are scratch)."""

    def __init__(self, model, cache: SlotCache, compile_step: bool):
        self.lm = model.language_model
        self.config = self.lm.config
        self.attention = getattr(self.config, "_attn_implementation", "sdpa") or "sdpa"
        if self.attention not in SUPPORTED_ATTENTION:
            raise ValueError(f"the engine supports attention implementations {', '.join(SUPPORTED_ATTENTION)}; "
                             f"this model uses {self.attention!r}")
        layer_types = getattr(self.config, "layer_types", None) or []
        self.sliding_window = getattr(self.config, "sliding_window", None) if "sliding_attention" in layer_types else None
        self.cache = cache
        self.scratch_slot, self.scratch_position = cache.slots - 1, cache.length - 1
        self.device, self.dtype = cache.layers[0].keys.device, cache.layers[0].keys.dtype
        self.compiled = compile_step
        self._buckets: dict[int, _DecodeInputs] = {}
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on a GPU
        if compile_step:
            # one graph per row bucket, and again after an on-demand cache grows: more than dynamo's default
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            torch._dynamo.config.accumulated_recompile_limit = max(
                torch._dynamo.config.accumulated_recompile_limit, 1024)
        self._step = torch.compile(self._masked_logits, dynamic=False, mode=mode) if compile_step else None

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
    def prefill(self, chunks: list[torch.Tensor], slots: list[int], starts: list[int]) -> torch.Tensor:
        """Write prompt chunks (each (C_i, H) embeddings) at positions ``starts[i]..`` of ``slots[i]``;
        the logits (K, V) after each chunk's last token."""
        sizes = [chunk.shape[0] for chunk in chunks]
        width = max(sizes)
        embeds = torch.zeros(len(chunks), width, chunks[0].shape[-1], dtype=chunks[0].dtype, device=self.device)
        for i, chunk in enumerate(chunks):
            embeds[i, :sizes[i]] = chunk
        offsets = torch.arange(width, device=self.device)[None]
        positions = torch.tensor(starts, device=self.device)[:, None] + offsets
        real = offsets < torch.tensor(sizes, device=self.device)[:, None]
        rows = torch.tensor(slots, device=self.device)
        plan = Plan(rows if len(slots) > 1 else slice(slots[0], slots[0] + 1),
                    max(start + size for start, size in zip(starts, sizes)),
                    torch.where(real, rows[:, None], self.scratch_slot),
                    torch.where(real, positions, self.scratch_position))
        decoder = self.lm.get_decoder()
        hidden = decoder(inputs_embeds=embeds, attention_mask=self._mask(positions, plan.length),
                         position_ids=positions, cache=self.cache.plan(plan), use_cache=True).last_hidden_state
        last = hidden[torch.arange(len(chunks), device=self.device), torch.tensor(sizes, device=self.device) - 1]
        return self.lm.get_output_embeddings()(last)

    # ---- decode --------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, tokens: list[int | None], positions: list[int]) -> torch.Tensor:
        """One token for the row in each slot 0..B-1 (None: no row decodes in that slot) -> logits (B, V)."""
        rows = len(tokens)
        live = [token is not None for token in tokens]
        ids = [token if token is not None else 0 for token in tokens]
        where = [position if ok else 0 for position, ok in zip(positions, live)]
        slots = [slot if ok else self.scratch_slot for slot, ok in enumerate(live)]
        writes = [position if ok else self.scratch_position for position, ok in zip(where, live)]
        if self.compiled:
            return self._decode_compiled(ids, where, slots, writes)[:rows]
        ids_t = torch.tensor(ids, device=self.device)[:, None]
        where_t = torch.tensor(where, device=self.device)[:, None]
        length = max(where) + 1  # eager: attend over the filled part of the slots only
        plan = Plan(slice(0, rows), length, torch.tensor(slots, device=self.device)[:, None],
                    torch.tensor(writes, device=self.device)[:, None])
        self.cache.plan(plan)
        return self._logits(ids_t, where_t, self._mask(where_t, length))

    def warm_up(self) -> None:
        """Compile every row bucket now (a server, before its first request), not at the first batch of
        each size. Only while no row uses the cache: the warm-up writes position 0 of the slots."""
        if not self.compiled:
            return
        started = time.perf_counter()
        for bucket in row_buckets(self.cache.slots - 1):
            if bucket not in self._buckets:
                self.decode([0] * bucket, [0] * bucket)
        log.info("decode step compiled for %s rows in %.1f s", ", ".join(map(str, self._buckets)),
                 time.perf_counter() - started)

    def _decode_compiled(self, ids: list[int], positions: list[int], slots: list[int],
                         writes: list[int]) -> torch.Tensor:
        rows = len(ids)
        bucket = next(size for size in row_buckets(self.cache.slots - 1) if size >= rows)
        inputs = self._buckets.get(bucket)
        first = inputs is None
        if first:
            inputs = self._buckets[bucket] = _DecodeInputs(bucket, self.cache.length, self.device)
        padding = bucket - rows
        values = [ids + [0] * padding, positions + [0] * padding, slots + [self.scratch_slot] * padding,
                  writes + [self.scratch_position] * padding]
        inputs.all.copy_(torch.tensor(values, device=self.device)[:, :, None])
        self.cache.plan(inputs.plan)
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed: replay over them
        logits = self._step(inputs.ids, inputs.positions)
        if first:
            log.info("compiled the decode step for %d rows in %.1f s", bucket, time.perf_counter() - started)
        return logits

    def _masked_logits(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The compiled step: the mask is built inside the graph, over the whole slot."""
        return self._logits(ids, positions, self._mask(positions, self.cache.length))

    def _logits(self, ids: torch.Tensor, positions: torch.Tensor, mask) -> torch.Tensor:
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True)
        return out.logits[:, -1]
