"""Opt-in training losses that never build the full (tokens x vocabulary) logits.

With a 152K vocabulary, the logits of an 8K-token row are 8K x 152K floats: 2.5 GB in bf16 and
5 GB once upcast to float32 for the loss, plus as much again for their gradient. The plain path
(``LlavaForCausalLM.forward`` with labels, ``model.llava.causal_lm_loss``) builds all of them.

``linear_cross_entropy`` takes the final hidden states instead. It keeps only the labelled
positions (LLaVA trains on the answers; prompts and visual tokens are most of a row), and for
chunks of them computes the logits, the loss and, when gradients are wanted, their gradients with
respect to the hidden states and the head's weight right away (softmax minus one-hot), so at most
one chunk of logits exists at a time and backward is a multiplication by the upstream scalar
(the approach of Liger-Kernel's fused linear cross-entropy, in plain PyTorch).

The value and the gradients equal the plain path's to float rounding (tests/test_losses.py: 1e-6
in float32). The head must be a plain linear layer (weight and optional bias): no logit soft-capping
or scaling. ``forward_with_linear_cross_entropy`` is the model's forward with labels, through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavakit.model.llava import IGNORE_INDEX, LlavaForCausalLM, LlavaOutput

DEFAULT_CHUNK = 2048  # rows of logits per chunk: 2048 x 152K float32 = 1.2 GB


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T + bias) against targets; gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):  # hidden (N, H), targets (N,)
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows, target = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            log_probs = F.linear(rows, weight, bias).float().log_softmax(-1)  # (n, V), as F.cross_entropy
            total += F.nll_loss(log_probs, target, reduction="sum")
            if not (want_hidden or want_weight or want_bias):
                continue
            grad = log_probs.exp_()  # d(sum of losses)/d logits = softmax - one_hot, in place
            grad[torch.arange(target.shape[0], device=grad.device), target] -= 1
            grad = grad.to(hidden.dtype)
            if want_hidden:
                grad_hidden[start:start + chunk_size] = grad @ weight
            if want_weight:
                grad_weight += (grad.t() @ rows).float()
            if want_bias:
                grad_bias += grad.float().sum(0)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.wanted = (want_hidden, want_weight, want_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = iter(ctx.saved_tensors)
        grads = []
        for wanted, dtype in zip(ctx.wanted, ctx.dtypes):
            grads.append((next(saved) * grad_output).to(dtype) if wanted else None)
        return (*grads, None, None)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions, and their count, without full logits.

    ``hidden`` (B, L, H) final hidden states, ``weight`` (V, H) the output head, ``labels`` (B, L)
    aligned with the inputs (position t is predicted from hidden state t - 1), -100 where not trained.
    Equals ``causal_lm_loss(F.linear(hidden, weight, bias), labels)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])[keep]  # (count, H): only positions with a target
    total = _LinearCrossEntropy.apply(rows, weight, bias, targets[keep], chunk_size)
    return total / max(count, 1), count


def forward_with_linear_cross_entropy(
    model: LlavaForCausalLM,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    visual_items=(),
    position_ids: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> LlavaOutput:
    """``model(..., labels=labels)`` with the loss from ``linear_cross_entropy`` (``logits`` is None)."""
    embeds = model.embed(input_ids, pixel_values, visual_items)
    decoder = model.language_model.get_decoder()
    hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state
    head = model.language_model.get_output_embeddings()
    labels = labels.masked_fill(model.placeholder_mask(input_ids), IGNORE_INDEX)
    loss, count = linear_cross_entropy(hidden, head.weight, labels, head.bias, chunk_size)
    return LlavaOutput(None, loss, count)
