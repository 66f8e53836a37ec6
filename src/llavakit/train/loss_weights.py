"""How much each trained token counts in the loss: per token (LLaVA), per sample, or between.

LLaVA averages the loss over every trained token of the global batch, so a sample weighs in
proportion to its answer: a one-word answer ("red" and the end of the turn, 2 tokens) counts a
thirtieth of a 60-token description in the same batch. In a mixture of short-answer VQA and long
descriptions the short tasks then get a small share of the gradient whatever their share of the
samples. InternVL 2.5 names the two ends *token averaging* (weight 1 per token) and *sample
averaging* (weight 1/n per token of a sample with n trained tokens: every sample counts the same)
and trains with *square averaging* between them (weight 1/sqrt(n)).

The weights here are per token, aligned with ``labels``; the loss is sum(w * ce) / sum(w) over the
global batch (``Trainer.train_step`` normalises by the global sum of weights, so gradient
accumulation and data parallelism give the same update as one big batch, as for token averaging).
"""

from __future__ import annotations

from typing import Literal

import torch

from llavakit.data.encoding import IGNORE_INDEX

LossReduction = Literal["token", "sample", "square"]
EXPONENTS = {"sample": 1.0, "square": 0.5}  # weight of a token = n ** -exponent


def label_weights(labels: torch.Tensor, sequence_ids: torch.Tensor, reduction: LossReduction) -> torch.Tensor | None:
    """Per-token loss weights (B, L) float32 for ``labels`` (B, L), or None for token averaging.

    ``sequence_ids`` (B, L) names the sample of each position (-1 on padding), as the collators
    build it, so packed rows with several samples are weighted sample by sample. Position t is the
    target of the prediction made at t - 1 (``causal_lm_loss``), so a sample's count is of its
    trained positions from the second on; column 0 never has a target and gets weight 0.
    """
    if reduction == "token":
        return None
    if reduction not in EXPONENTS:
        raise ValueError(f"loss reduction {reduction!r}: use token, sample or square")
    weights = torch.zeros(labels.shape, dtype=torch.float32)
    targets, owners = labels[:, 1:].cpu(), sequence_ids[:, 1:].cpu()
    trained = (targets != IGNORE_INDEX) & (owners >= 0)
    if not trained.any():
        return weights
    owner = owners[trained]
    counts = torch.bincount(owner, minlength=int(owner.max()) + 1).float()
    per_token = counts.clamp(min=1.0) ** -EXPONENTS[reduction]
    weights[:, 1:][trained] = per_token[owner]
    return weights


__all__ = ["EXPONENTS", "LossReduction", "label_weights"]
