"""The opt-in fused linear cross-entropy equals the plain loss, value and gradients (float32, 1e-6)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_image

import llavakit
from llavakit.model.llava import IGNORE_INDEX, causal_lm_loss
from llavakit.model.losses import (
    forward_with_linear_cross_entropy,
    linear_cross_entropy,
)

TOL = 1e-6


def _labels(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[torch.rand(batch, length, generator=generator) < 0.4] = IGNORE_INDEX
    labels[0, : length // 2] = IGNORE_INDEX  # a prompt
    return labels


def _grads(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Gradients (zeros for tensors the loss does not reach, e.g. the vision tower's unused head)."""
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("with_bias", [False, True])
def test_value_and_gradients_equal_the_plain_loss(chunk, with_bias):
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 16, requires_grad=True)
    weight = (torch.randn(50, 16) * 0.3).requires_grad_()
    bias = torch.randn(50, requires_grad=True) if with_bias else None
    labels = _labels(3, 21, 50)
    inputs = [t for t in (hidden, weight, bias) if t is not None]

    plain, plain_count = causal_lm_loss(torch.nn.functional.linear(hidden, weight, bias), labels)
    fused, fused_count = linear_cross_entropy(hidden, weight, labels, bias, chunk_size=chunk)
    assert fused_count == plain_count > 0
    torch.testing.assert_close(fused, plain, atol=TOL, rtol=TOL)
    for got, expected in zip(_grads(fused * 2.5, *inputs), _grads(plain * 2.5, *inputs)):  # upstream scale kept
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)


def test_frozen_head_and_no_grad():
    torch.manual_seed(1)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    weight = torch.randn(30, 8)  # frozen head (LoRA): only the hidden states get gradients
    labels = _labels(2, 9, 30, seed=1)
    plain, _ = causal_lm_loss(hidden @ weight.t(), labels)
    fused, _ = linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    torch.testing.assert_close(_grads(fused, hidden)[0], _grads(plain, hidden)[0], atol=TOL, rtol=TOL)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels)[0], plain.detach(), atol=TOL, rtol=TOL)


def test_no_labelled_token_gives_zero():
    hidden = torch.randn(1, 5, 4, requires_grad=True)
    loss, count = linear_cross_entropy(hidden, torch.randn(10, 4), torch.full((1, 5), IGNORE_INDEX))
    assert count == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_model_forward_equals_plain_forward_with_labels(onevision_dir):
    ours = llavakit.load(onevision_dir)
    model = ours.model.train()
    conversation = [{"role": "user", "content": [{"type": "image", "image": random_image(60, 90, seed=4)},
                                                 {"type": "text", "text": "What do you see?"}]}]
    inputs = ours.prepare([conversation, [{"role": "user", "content": "Hello there, how are you?"}]])
    labels = inputs.input_ids.masked_fill(inputs.attention_mask == 0, IGNORE_INDEX)
    kwargs = {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask,
              "pixel_values": inputs.pixel_values, "visual_items": inputs.visual_items}
    params = [p for p in model.parameters() if p.requires_grad]

    plain = model(**kwargs, labels=labels)
    fused = forward_with_linear_cross_entropy(model, labels=labels, chunk_size=5, **kwargs)
    assert fused.num_label_tokens == plain.num_label_tokens
    torch.testing.assert_close(fused.loss, plain.loss, atol=TOL, rtol=TOL)
    for got, expected in zip(_grads(fused.loss, *params), _grads(plain.loss, *params)):
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
