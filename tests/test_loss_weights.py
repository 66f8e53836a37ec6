"""Loss reductions: token averaging (LLaVA), sample averaging and square averaging (InternVL 2.5).

The weights are checked against their definition, the weighted loss against per-sample losses
computed one row at a time, and the trainer's update under gradient accumulation against one big
micro-batch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from llavakit.data.encoding import IGNORE_INDEX
from llavakit.model.llava import causal_lm_loss
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from llavakit.train.loss_weights import label_weights
from train_fixtures import base_config, write_caption_data

X = IGNORE_INDEX


def _labels_and_owners():
    # row 0: sample 0 with 2 trained targets, then padding; row 1: two packed samples (3 and 1)
    labels = torch.tensor([[X, 5, 6, X, X, X], [X, 7, 8, 9, X, 4]])
    owners = torch.tensor([[0, 0, 0, 0, -1, -1], [1, 1, 1, 1, 2, 2]])
    return labels, owners


def test_token_averaging_has_no_weights():
    labels, owners = _labels_and_owners()
    assert label_weights(labels, owners, "token") is None


@pytest.mark.parametrize("reduction, exponent", [("sample", 1.0), ("square", 0.5)])
def test_each_sample_weighs_its_count_to_the_power(reduction, exponent):
    labels, owners = _labels_and_owners()
    weights = label_weights(labels, owners, reduction)
    assert weights.shape == labels.shape and weights.dtype == torch.float32
    assert torch.all(weights[:, 0] == 0)  # column 0 is never a target
    trained = torch.zeros_like(labels, dtype=torch.bool)
    trained[:, 1:] = labels[:, 1:] != X
    assert torch.all(weights[~trained] == 0)
    for sample, count in ((0, 2), (1, 3), (2, 1)):
        mine = (owners == sample) & trained
        assert int(mine.sum()) == count
        torch.testing.assert_close(weights[mine], torch.full((count,), count ** -exponent))
        assert math.isclose(float(weights[mine].sum()), count ** (1 - exponent), rel_tol=1e-6)


def test_an_unknown_reduction_is_refused():
    labels, owners = _labels_and_owners()
    with pytest.raises(ValueError, match="mean"):
        label_weights(labels, owners, "mean")


def test_sample_averaging_is_the_mean_of_per_sample_losses():
    torch.manual_seed(0)
    labels = torch.tensor([[X, 3, 4, 5, 6, 7, 8, 2], [X, X, X, X, X, X, 9, 2], [X, X, X, 1, 2, X, X, X]])
    owners = torch.tensor([[0] * 8, [1] * 8, [2] * 5 + [-1] * 3])
    logits = torch.randn(3, 8, 12, requires_grad=True)
    weighted, count = causal_lm_loss(logits, labels, label_weights(labels, owners, "sample"))
    per_sample = [causal_lm_loss(logits[i:i + 1], labels[i:i + 1])[0] for i in range(3)]
    assert count == 11
    torch.testing.assert_close(weighted, torch.stack(per_sample).mean())
    plain, _ = causal_lm_loss(logits, labels)
    assert not torch.allclose(weighted, plain)  # the 7-token answer no longer dominates
    ones = torch.ones(labels.shape)
    torch.testing.assert_close(causal_lm_loss(logits, labels, ones)[0], plain)


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # captions ("It is red.") and one-token numbers: answers of different lengths in every batch
    return write_caption_data(tmp_path_factory.mktemp("data"), count=12, text_only=12)


@pytest.mark.parametrize("reduction", ["sample", "square"])
def test_accumulated_micro_batches_equal_one_batch(data, onevision_dir, tmp_path, reduction):
    """The update is sum(w * ce) / (the global batch's total weight), whatever the micro-batches."""
    runs = {}
    for micro in (1, 4):
        config = base_config(data, tmp_path / f"{reduction}{micro}", model={"checkpoint": str(onevision_dir)},
                             micro_batch_size=micro, global_batch_size=4, max_steps=4, loss_reduction=reduction)
        trainer = Trainer(build_config(config))
        trainer.run()
        runs[micro] = (_losses(tmp_path / f"{reduction}{micro}"), trainer.unwrapped().state_dict())
    (one, one_state), (four, four_state) = runs[1], runs[4]
    assert len(one) == 4 and max(abs(a - b) for a, b in zip(one, four)) < 1e-5
    for name, value in one_state.items():
        torch.testing.assert_close(value, four_state[name], atol=1e-5, rtol=1e-4)
    token = base_config(data, tmp_path / "token", model={"checkpoint": str(onevision_dir)},
                        micro_batch_size=4, global_batch_size=4, max_steps=1)
    Trainer(build_config(token)).run()
    assert abs(_losses(tmp_path / "token")[0] - four[0]) > 1e-4  # the same batch, weighted otherwise


def test_dpo_refuses_a_loss_reduction(data, onevision_dir, tmp_path):
    config = base_config(data, tmp_path / "dpo", model={"checkpoint": str(onevision_dir)}, stage="dpo",
                         loss_reduction="sample")
    with pytest.raises(Exception, match="loss_reduction"):
        build_config(config)
