"""A preallocated KV cache: per layer, one key and one value buffer of ``slots x heads x length x dim``.

Each sequence being generated owns a slot; its keys and values for position ``p`` live at
``[slot, :, p]``. The buffers are allocated once and reused by every request, and nothing is
concatenated per step: a forward pass writes each row's new keys at that row's own positions
(``index_put_``) and attends over a view of the buffer, with a mask of the row's filled positions
(built by the engine). Before each forward the engine says which slots the batch covers and where
each query token is written (:meth:`SlotCache.plan`).

The class is a transformers ``Cache``: the language model's attention layers call ``update`` as
they do for transformers' own caches, and get back the keys and values to attend over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

log = logging.getLogger("llavakit.engine")


@dataclass
class Plan:
    """Where one forward pass reads and writes the cache."""

    rows: slice  # the slots the batch's rows are (row i of the batch = slot rows.start + i)
    length: int  # positions attended over (the mask covers the same width)
    write_slots: torch.Tensor  # (B, Q) slot of each query token's keys
    write_positions: torch.Tensor  # (B, Q) position of each query token's keys


class SlotLayer(CacheLayerMixin):
    """One attention layer's buffers; reads and writes follow the owning cache's plan."""

    is_compileable = True
    is_sliding = False

    def __init__(self, cache: SlotCache, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.cache, self.keys, self.values = cache, keys, values
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        plan = self.cache.current
        # (B, H, Q, D) -> (B, Q, H, D): advanced indices on dims 0 and 2 put (B, Q) first.
        self.keys[plan.write_slots, :, plan.write_positions] = key_states.transpose(1, 2).to(self.keys.dtype)
        self.values[plan.write_slots, :, plan.write_positions] = value_states.transpose(1, 2).to(self.values.dtype)
        return self.keys[plan.rows, :, :plan.length], self.values[plan.rows, :, :plan.length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.current.length, 0

    def get_seq_length(self) -> int:
        return 0  # positions are per row; the engine always passes position_ids

    def get_max_length(self) -> int:
        return self.keys.shape[2]


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> CacheShape:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.num_hidden_layers, kv_heads, head_dim)

    def bytes(self, slots: int, length: int, dtype: torch.dtype) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * self.layers * slots * self.kv_heads * length * self.head_dim * element


class SlotCache(Cache):
    """``slots`` sequences of up to ``length`` tokens each, for every layer of a language model."""

    def __init__(self, config, slots: int, length: int, dtype: torch.dtype, device: torch.device | str):
        self.shape = CacheShape.of(config)
        self.slots, self.length = slots, length
        size = (slots, self.shape.kv_heads, length, self.shape.head_dim)
        layers = []
        for _ in range(self.shape.layers):
            keys = torch.zeros(size, dtype=dtype, device=device)
            values = torch.zeros(size, dtype=dtype, device=device)
            torch._dynamo.mark_static_address(keys)  # a compiled step reads them in place, never copies
            torch._dynamo.mark_static_address(values)
            layers.append(SlotLayer(self, keys, values))
        super().__init__(layers=layers)
        self.current: Plan | None = None
        self.bytes = self.shape.bytes(slots, length, dtype)

    def plan(self, plan: Plan) -> SlotCache:
        self.current = plan
        return self

    def copy_slot(self, source: int, targets: list[int], length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into each target slot."""
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                buffer[targets, :, :length] = buffer[source, :, :length]

    def copy_from(self, other: SlotCache) -> None:
        """Carry another cache's contents over (a larger cache replacing a smaller one)."""
        slots, length = min(self.slots, other.slots), min(self.length, other.length)
        for mine, theirs in zip(self.layers, other.layers):
            mine.keys[:slots, :, :length] = theirs.keys[:slots, :, :length]
            mine.values[:slots, :, :length] = theirs.values[:slots, :, :length]

    def data_ptrs(self) -> list[int]:
        return [buffer.data_ptr() for layer in self.layers for buffer in (layer.keys, layer.values)]

    def describe(self) -> str:
        return (f"{self.slots} slots x {self.length} tokens, {self.shape.layers} layers x {self.shape.kv_heads} "
                f"KV heads x {self.shape.head_dim}: {self.bytes / 2**20:.1f} MiB")
