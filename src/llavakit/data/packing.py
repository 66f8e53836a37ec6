"""Sequence packing: several samples in one row, each attending only to itself.

Each packed sample keeps its own positions (restarting at 0) and its own causal block, so its
logits equal those of the sample alone in an unpadded row. Two ways to tell the LLM where samples
end, both read by transformers 5 for Llama/Qwen2-style models:

- ``mask="position_ids"`` (default): ``attention_mask=None`` and restarted ``position_ids``;
  transformers derives the block-causal mask from where positions restart (sdpa, eager, flex), and
  flash-attention uses the same positions for variable-length kernels.
- ``mask="bool"`` / ``"additive"``: an explicit (B, 1, L, L) block-causal mask, used as given. sdpa
  and flex take the bool form; eager adds the mask to its scores, so it needs the additive form.

The first token of every packed sample is not a target: alone, nothing before it predicts it.
Padding at the end of a row forms its own block with label -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from llavakit.data.collate import TrainingBatch, empty_batch, split_skipped, stack_pixels
from llavakit.data.dataset import EncodedSample
from llavakit.data.encoding import IGNORE_INDEX
from llavakit.data.errors import SkippedSample

MaskKind = Literal["position_ids", "bool", "additive"]


def pack_rows(
    lengths: Sequence[int], capacity: int, crops: Sequence[int] | None = None, max_crops: int | None = None
) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows of at most ``capacity`` tokens (and
    ``max_crops`` vision-tower crops). Deterministic: ties keep index order; rows list indices ascending."""
    crops = crops if crops is not None else [0] * len(lengths)
    rows: list[list[int]] = []
    used: list[tuple[int, int]] = []  # (tokens, crops) per row
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[index] > capacity or (max_crops is not None and crops[index] > max_crops):
            raise ValueError(f"sample {index} ({lengths[index]} tokens, {crops[index]} crops) does not fit in a row "
                             f"of {capacity} tokens and {max_crops} crops")
        for row, (tokens, row_crops) in enumerate(used):
            if tokens + lengths[index] <= capacity and (max_crops is None or row_crops + crops[index] <= max_crops):
                rows[row].append(index)
                used[row] = (tokens + lengths[index], row_crops + crops[index])
                break
        else:
            rows.append([index])
            used.append((lengths[index], crops[index]))
    return [sorted(row) for row in rows]


def block_causal_mask(sequence_ids: torch.Tensor, kind: MaskKind = "bool",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) sample ids -> (B, 1, L, L): query q sees key k iff same sample and k <= q.

    ``bool``: True where attention is allowed. ``additive``: 0 there, the dtype's minimum elsewhere.
    """
    length = sequence_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=sequence_ids.device).tril()
    allowed = (sequence_ids[:, :, None] == sequence_ids[:, None, :]) & causal
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    if kind == "additive":
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"mask kind {kind!r}: use bool or additive (or position_ids in the collator)")


class PackingCollator:
    """Packs the samples it is given into as few rows of ``capacity`` tokens as first-fit decreasing finds."""

    def __init__(self, capacity: int, pad_token_id: int, mask: MaskKind = "position_ids",
                 max_crops: int | None = None, pad_to_capacity: bool = False):
        if mask not in ("position_ids", "bool", "additive"):
            raise ValueError(f"mask {mask!r}: use position_ids, bool or additive")
        self.capacity, self.pad_token_id, self.mask = capacity, pad_token_id, mask
        self.max_crops, self.pad_to_capacity = max_crops, pad_to_capacity

    def __call__(self, items: Sequence[EncodedSample | SkippedSample]) -> TrainingBatch:
        samples, skipped = split_skipped(items)
        if not samples:
            return empty_batch(skipped)
        crops = [sum(item.num_crops for item in s.visual_items) for s in samples]
        rows = pack_rows([s.length for s in samples], self.capacity, crops, self.max_crops)
        ordered = [samples[i] for row in rows for i in row]  # sample order = row by row
        width = self.capacity if self.pad_to_capacity else max(sum(samples[i].length for i in row) for row in rows)
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        sequence_ids = torch.full(shape, -1, dtype=torch.long)
        number = 0
        for row, members in enumerate(rows):
            start = 0
            for i in members:
                sample, end = samples[i], start + samples[i].length
                ids[row, start:end] = sample.input_ids
                labels[row, start:end] = sample.labels
                labels[row, start] = IGNORE_INDEX  # the first token has no prediction of its own
                positions[row, start:end] = torch.arange(sample.length)
                sequence_ids[row, start:end] = number
                number, start = number + 1, end
            positions[row, start:] = torch.arange(width - start)  # padding: a block of its own
        mask = None if self.mask == "position_ids" else block_causal_mask(sequence_ids, self.mask)
        return TrainingBatch(
            ids, mask, labels, stack_pixels(ordered), [item for s in ordered for item in s.visual_items],
            position_ids=positions, sequence_ids=sequence_ids, sample_indices=[s.index for s in ordered],
            sample_ids=[s.sample_id for s in ordered], skipped=skipped,
        )


def sample_losses(logits: torch.Tensor, labels: torch.Tensor, sequence_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample (float32), packed or not: (num_samples,).

    Each target token counts for the sample it belongs to (``sequence_ids`` at the target).
    """
    targets, owners = labels[:, 1:].reshape(-1), sequence_ids[:, 1:].reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    keep = targets != IGNORE_INDEX
    losses = F.cross_entropy(flat[keep], targets[keep], reduction="none")
    count = int(sequence_ids.max()) + 1
    sums = torch.zeros(count, dtype=torch.float32, device=logits.device).index_add_(0, owners[keep], losses)
    tokens = torch.zeros(count, dtype=torch.float32, device=logits.device).index_add_(
        0, owners[keep], torch.ones_like(losses))
    return sums / tokens.clamp(min=1)
