"""Visual features encoded once: a bounded LRU cache of each image's or video's packed vectors.

A follow-up turn about the same image, or the same image in another request, skips the vision
tower, the projector and the packing. ``LlavaForCausalLM.embed(..., feature_cache=cache)`` asks the
cache for every visual item; the items it does not hold are encoded together in one
``encode_visual`` call and stored.

**What is stored**: an item's packed vectors (``layout.token_count(item)`` x LLM width), the very
tensor ``encode_visual`` produced for it, after the projector, the grid stitching, unpadding,
``anyres_max`` reduction, newlines and video pooling. Packing is a function of the crop features
and of the item's layout (kind, media size, grid, newline layout), and both are in the key, so
caching after it is exact and saves the most work.

**The key** is (model, visual settings, item, content):

- *model*: a serial number given to each model object the cache sees (held weakly), with its
  parameters' dtype and device: two models never share entries, and a model moved to another
  dtype misses. A model whose weights change in place (training) must ``clear()`` the cache;
  training never passes one.
- *visual settings*: the model config's ``vision``, ``projector`` and ``visual`` sections and its
  tokens per side (feature layer, CLS handling, projector type, reduction, newline and pooling
  settings): whatever shapes the vectors of one set of crops.
- *item*: the ``VisualItem`` (kind, media size, crop count, grid, newline layout).
- *content*: SHA-256 of the item's crop pixels as the tower receives them (bytes, dtype and shape).

Why the pixels and not the decoded media: the pixels are the tower's whole input, so everything
the processor did (crop size, pinpoints, resampling, padding, mean and std, video frame sampling)
is in the key by construction; a key made from the decoded file would have to list those settings,
and one forgotten setting would serve stale features. Pixels are a few megabytes per item, and
hashing reads each byte once, while the tower multiplies every patch by all of its weights, so the
key costs a small fraction of the forward it saves (``stats().key_seconds`` measures it). The hash
is cryptographic because a server shares the cache among its clients: with a non-cryptographic
hash, a client could craft an image that collides with another client's and be answered about it.

**Bounded**: the byte count of the stored tensors never exceeds ``max_bytes``; storing evicts the
least recently used entries first, and an item larger than the whole budget is not stored (the
table is ``utils.lru.ByteLRU``, shared with the pixel cache). Thread-safe: locks guard the table and
the counters; encoding runs outside them (two threads missing the same
item at once both encode it; the second store replaces the first).

Vectors served from the cache are those of the item's first encoding. They equal a fresh encoding
bit for bit when the tower's kernels do not depend on the batch (on a GPU, kernels chosen by batch
shape can round differently, as they do for any change of batch composition).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llavakit import layout
from llavakit.errors import PlaceholderError
from llavakit.layout import VisualItem
from llavakit.utils.lru import ByteLRU

if TYPE_CHECKING:
    from llavakit.model.llava import LlavaForCausalLM


@dataclass(frozen=True)
class FeatureCacheStats:
    hits: int  # items served from the cache
    misses: int  # items encoded by the tower
    evictions: int  # entries dropped to stay within max_bytes
    entries: int
    bytes: int  # bytes of the stored tensors
    max_bytes: int
    key_seconds: float  # time spent hashing pixels (the cache's own overhead)


class FeatureCache:
    """Bounded (bytes), least-recently-used, thread-safe cache of packed visual vectors."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"feature cache: max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._table: ByteLRU[torch.Tensor] = ByteLRU(self.max_bytes, tensor_bytes)
        self._lock = threading.Lock()  # the model serials and the counters
        self._models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> serial
        self._serials = itertools.count()
        self._freed: list[int] = []  # serials of freed models, appended by their finalizers
        self._hits = self._misses = 0
        self._key_seconds = 0.0

    # ---- the model's hook ---------------------------------------------------------------------
    def encode(self, model: LlavaForCausalLM, pixel_values: torch.Tensor, items: Sequence[VisualItem],
               device: torch.device) -> torch.Tensor:
        """``model.encode_visual(pixel_values, items)``, with cached items skipping the tower."""
        items = list(items)
        counts = [item.num_crops for item in items]
        if pixel_values.shape[0] != sum(counts):
            raise PlaceholderError(f"{pixel_values.shape[0]} crops given but the visual items need {sum(counts)}")
        per_item = torch.split(pixel_values, counts)
        keys = self._keys(model, per_item, items)
        found = self._lookup(keys)
        missing: dict[Hashable, int] = {}  # key -> index of the first item with it (a repeat is encoded once)
        for index, key in enumerate(keys):
            if key not in found and key not in missing:
                missing[key] = index
        if missing:
            indexes = list(missing.values())
            pixels = torch.cat([per_item[i] for i in indexes]).to(device)
            vectors = model.encode_visual(pixels, [items[i] for i in indexes])
            sizes = [layout.token_count(items[i], model.config.visual, model.tokens_per_side) for i in indexes]
            for key, packed in zip(missing, torch.split(vectors, sizes)):
                found[key] = packed.detach().clone()  # its own storage: a view would hold the whole batch's
                self._table.put(key, found[key])
        with self._lock:
            self._misses += len(missing)
            self._hits += len(keys) - len(missing)
        return torch.cat([found[key] for key in keys])  # a new tensor: the caller cannot change an entry

    # ---- keys -------------------------------------------------------------------------------------
    def _keys(self, model: LlavaForCausalLM, per_item: Sequence[torch.Tensor],
              items: Sequence[VisualItem]) -> list[Hashable]:
        started = time.perf_counter()
        model_key = self._model_key(model)
        host = [crops.detach().cpu() for crops in per_item] if per_item[0].device.type != "cpu" else per_item
        keys = [(model_key, item, content_digest(crops)) for item, crops in zip(items, host)]
        with self._lock:
            self._key_seconds += time.perf_counter() - started
        return keys

    def _model_key(self, model: LlavaForCausalLM) -> tuple:
        with self._lock:
            serial = self._models.get(model)
            if serial is None:  # serials are never reused, so a new model at a dead one's address misses
                serial = self._models[model] = next(self._serials)
                # The finalizer only appends (it may run inside a garbage collection while the lock is
                # held); the entries go at the next call.
                weakref.finalize(model, self._freed.append, serial)
        config = model.config
        settings = (config.vision.model_dump_json(), config.projector.model_dump_json(),
                    config.visual.model_dump_json(), config.tokens_per_side)
        parameter = next(model.parameters())
        return serial, settings, str(parameter.dtype), str(parameter.device)

    def _drop_freed_models(self) -> None:
        """Entries of freed models can never be asked for again: their memory goes."""
        freed = set()
        while True:
            try:  # another thread may take the last serial between a check and a pop
                freed.add(self._freed.pop())
            except IndexError:
                break
        if freed:
            self._table.discard_where(lambda key: key[0][0] in freed)

    # ---- the table ------------------------------------------------------------------------------
    def _lookup(self, keys: Sequence[Hashable]) -> dict[Hashable, torch.Tensor]:
        self._drop_freed_models()
        found = {}
        for key in keys:
            tensor = self._table.get(key)
            if tensor is not None:
                found[key] = tensor
        return found

    def clear(self) -> None:
        """Forget every entry (e.g. after the model's weights changed); counters are kept."""
        self._table.clear()

    def stats(self) -> FeatureCacheStats:
        self._drop_freed_models()
        with self._lock:
            hits, misses, key_seconds = self._hits, self._misses, self._key_seconds
        return FeatureCacheStats(hits, misses, self._table.evictions, len(self._table), self._table.bytes,
                                 self.max_bytes, key_seconds)

    def __len__(self) -> int:
        return self.stats().entries


def content_digest(crops: torch.Tensor) -> bytes:
    """SHA-256 of a CPU tensor's bytes, dtype and shape (any dtype: the bytes are read as uint8)."""
    data = crops.contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(memoryview(data.view(torch.uint8).numpy()) if data.numel() else b"")
    return digest.digest()


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
