"""Batches for the model: padded rows, labels, crops of every sample in placeholder order.

A :class:`TrainingBatch` is the processor's ``ModelInputs`` plus ``labels`` (and, for packed rows,
``position_ids``). Visual items follow placeholder order across the batch, row by row, which is
the order the model scatters features in. Skipped samples travel with the batch (DataLoader
workers are other processes) so the training loop can report them at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llavakit.data.dataset import EncodedSample
from llavakit.data.encoding import IGNORE_INDEX
from llavakit.data.errors import SkippedSample
from llavakit.layout import VisualItem


@dataclass
class TrainingBatch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor | None  # (B, L) padding mask; None or (B, 1, L, L) for packed rows
    labels: torch.Tensor  # (B, L), -100 where not trained
    pixel_values: torch.Tensor | None = None  # (total crops, 3, S, S)
    visual_items: list[VisualItem] = field(default_factory=list)
    position_ids: torch.Tensor | None = None  # (B, L), restarting at 0 for each packed sample
    sequence_ids: torch.Tensor | None = None  # (B, L): the sample (index into sample_ids) of each token, -1 padding
    sample_indices: list[int] = field(default_factory=list)  # dataset positions, in sequence_ids order
    sample_ids: list[str] = field(default_factory=list)
    skipped: list[SkippedSample] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """Every sample of this batch was skipped: there is nothing to run."""
        return not self.sample_ids

    @property
    def num_tokens(self) -> int:
        return int((self.sequence_ids >= 0).sum()) if self.sequence_ids is not None else int(self.input_ids.numel())

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for ``LlavaForCausalLM.forward``."""
        return dict(
            input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=self.pixel_values,
            visual_items=self.visual_items, labels=self.labels, position_ids=self.position_ids,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TrainingBatch:
        """Tensors on ``device``; ``dtype`` applies to pixels (and to an additive float 4D mask)."""
        def move(t, cast=False):
            if t is None:
                return None
            if cast and dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return TrainingBatch(
            move(self.input_ids), move(self.attention_mask, cast=True), move(self.labels),
            move(self.pixel_values, cast=True), self.visual_items, move(self.position_ids), move(self.sequence_ids),
            self.sample_indices, self.sample_ids, self.skipped,
        )


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its EOS (padding is never attended to nor trained)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a pad nor an eos token; pass pad_token_id explicitly")


def split_skipped(items: Sequence[EncodedSample | SkippedSample]) -> tuple[list[EncodedSample], list[SkippedSample]]:
    samples = [i for i in items if isinstance(i, EncodedSample)]
    skipped = [i for i in items if isinstance(i, SkippedSample)]
    return samples, skipped


def stack_pixels(samples: Sequence[EncodedSample]) -> torch.Tensor | None:
    arrays = [s.pixel_values for s in samples if s.pixel_values is not None]
    return torch.from_numpy(np.concatenate(arrays)) if arrays else None


def empty_batch(skipped: list[SkippedSample]) -> TrainingBatch:
    none = torch.zeros((0, 0), dtype=torch.long)
    return TrainingBatch(none, none, none, skipped=skipped)


class Collator:
    """Pads encoded samples into rows (right padding by default; labels -100 on padding)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.padding_side, self.multiple = pad_token_id, padding_side, pad_to_multiple_of

    def __call__(self, items: Sequence[EncodedSample | SkippedSample]) -> TrainingBatch:
        samples, skipped = split_skipped(items)
        if not samples:
            return empty_batch(skipped)
        width = max(s.length for s in samples)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        sequence_ids = torch.full_like(ids, -1)
        for row, sample in enumerate(samples):
            span = slice(0, sample.length) if self.padding_side == "right" else slice(width - sample.length, width)
            ids[row, span], labels[row, span], mask[row, span] = sample.input_ids, sample.labels, 1
            sequence_ids[row, span] = row
        return TrainingBatch(
            ids, mask, labels, stack_pixels(samples), [item for s in samples for item in s.visual_items],
            sequence_ids=sequence_ids, sample_indices=[s.index for s in samples],
            sample_ids=[s.sample_id for s in samples], skipped=skipped,
        )
