"""LoRA: only adapters (and chosen parts) change, the merged checkpoint equals base + adapters.
DPO: the loss equals hand-computed values; a short run raises the chosen-over-rejected margin."""

from __future__ import annotations

import json
import math

import pytest
import torch

import llavakit
from llavakit.train.config import DpoSettings, build_config
from llavakit.train.dpo import DpoTrainer, dpo_loss, sequence_logps
from llavakit.train.loop import Trainer
from train_fixtures import COLORS, base_config, write_caption_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=16)


def test_lora_changes_only_adapters_and_chosen_parts_and_merges_exactly(data, onevision_dir, tmp_path):
    rules = [{"pattern": r"^vision_tower\.", "frozen": True}, {"pattern": ".", "lr": 1e-3}]
    config = build_config(base_config(data, tmp_path / "run", model={"checkpoint": str(onevision_dir)},
                                      trainable=rules, lora={"rank": 4, "alpha": 8, "lr": 1e-2}))
    trainer = Trainer(config)
    trainer.setup()
    model = trainer.unwrapped()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.run()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or k.startswith(("multi_modal_projector.", "image_newline")) for k in changed)
    assert any("lora_" in k for k in changed)
    assert not any(k.startswith("language_model.") and "lora_" not in k for k in changed)

    merged = llavakit.load(tmp_path / "run" / "model")  # saved with adapters merged into the weights
    assert not any("lora" in k for k in merged.model.state_dict())
    conversation = [{"role": "user", "content": [{"type": "image", "image": str(data.parent / "images" / "3.png")},
                                                 {"type": "text", "text": "What colour is the picture?"}]}]
    inputs = merged.prepare([conversation])
    model.eval()
    with torch.no_grad():
        expected = model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits
        got = merged.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits
    assert (expected - got).abs().max() < 1e-5


def test_dpo_loss_matches_hand_computed_values():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-5.0, -7.0, -6.0, -6.0))  # h = (1) - (-1) = 2
    sigmoid = dpo_loss(pc, pr, rc, rr, DpoSettings(beta=0.1)).losses.item()
    assert sigmoid == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))), abs=1e-6)  # 0.598139
    assert dpo_loss(pc, pr, rc, rr, DpoSettings(beta=0.1, loss="ipo")).losses.item() == pytest.approx(9.0)  # (2-5)^2
    assert dpo_loss(pc, pr, rc, rr, DpoSettings(beta=0.1, loss="hinge")).losses.item() == pytest.approx(0.8)
    smoothed = dpo_loss(pc, pr, rc, rr, DpoSettings(beta=0.1, label_smoothing=0.1)).losses.item()
    expected = -0.9 * math.log(1 / (1 + math.exp(-0.2))) - 0.1 * math.log(1 / (1 + math.exp(0.2)))
    assert smoothed == pytest.approx(expected, abs=1e-6)


def test_sequence_logps_sum_labelled_token_logprobs():
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0 + 1e-9], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]]]))
    labels = torch.tensor([[-100, 1, 2]])  # position 0 predicts token 1 (p=.5), position 1 predicts token 2 (p=.2)
    assert sequence_logps(logits, labels).item() == pytest.approx(math.log(0.5) + math.log(0.2), abs=1e-5)


def _pairs(tmp_path, count=8):
    rows = []
    images = tmp_path / "images"
    for i in range(count):
        name = list(COLORS)[i % 4]
        wrong = list(COLORS)[(i + 1) % 4]
        rows.append({"id": f"p{i}", "image": f"{i}.png", "prompt": "<image>\nWhat colour is the picture?",
                     "chosen": f"It is {name}.", "rejected": f"It is {wrong}."})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, images


def _margin(model, pairs_path, images):
    margins = []
    for line in pairs_path.read_text().splitlines():
        record = json.loads(line)
        logps = []
        for answer in (record["chosen"], record["rejected"]):
            conversation = [{"role": "user", "content": [{"type": "image", "image": str(images / record["image"])},
                                                         {"type": "text", "text": "What colour is the picture?"}]},
                            {"role": "assistant", "content": answer}]
            inputs = model.prepare([conversation], add_generation_prompt=False)
            prompt = model.prepare([conversation[:1]])
            labels = inputs.input_ids.clone()
            labels[:, : prompt.input_ids.shape[1]] = -100
            with torch.no_grad():
                logits = model.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values,
                                     inputs.visual_items).logits
            logps.append(sequence_logps(logits, labels).item())
        margins.append(logps[0] - logps[1])
    return sum(margins) / len(margins)


def test_dpo_first_step_loss_is_log2_and_training_raises_the_margin(data, onevision_dir, tmp_path):
    pairs, images = _pairs(data.parent)
    config = build_config({
        "stage": "dpo", "model": {"checkpoint": str(onevision_dir)},
        "data": {"sources": [{"path": str(pairs), "image_folder": str(images)}]},
        "output_dir": str(tmp_path / "dpo"), "micro_batch_size": 2, "global_batch_size": 4, "max_steps": 12,
        "optim": {"warmup_ratio": 0.0, "lr": 5e-3, "schedule": "constant"}, "tensorboard": False,
        "trainable": [{"pattern": r"^vision_tower\.", "frozen": True}, {"pattern": ".", "lr": 5e-3}],
        "dpo": {"beta": 0.5},
    })
    before = _margin(llavakit.load(onevision_dir), pairs, images)
    DpoTrainer(config).run()
    records = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    # policy == reference at the first step: every pair has h = 0, so the loss is -log sigmoid(0) = log 2
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert "dpo/margin" in records[0] and "dpo/accuracy" in records[-1]
    after = _margin(llavakit.load(tmp_path / "dpo" / "model"), pairs, images)
    assert after > before + 0.5


def test_a_bad_preference_line_is_named_by_file_and_line(tmp_path):
    from llavakit.train.config import TrainConfigError
    from llavakit.train.dpo import read_pairs

    good = json.dumps({"id": "p1", "prompt": "Colour?", "chosen": "Red.", "rejected": "Blue."})
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(f"{good}\n\n".encode() + b'{"prompt": "Caf\xe9?", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(TrainConfigError, match=rf"^{path}:3: line is not UTF-8 text: byte 0xe9 at line 3"):
        read_pairs(path, None, None)
    path.write_text(f"{good}\n{{\n")
    with pytest.raises(TrainConfigError, match=rf"^{path}:2: line is not valid JSON"):
        read_pairs(path, None, None)
    path.write_text(f"{good}\n[1]\n")
    with pytest.raises(TrainConfigError, match=rf"^{path}:2: a preference record is a JSON object, got list"):
        read_pairs(path, None, None)
    path.write_text(f"{good}\n")
    chosen, rejected, refs = read_pairs(path, None, None)
    assert [e.sample_id for e in chosen + rejected] == ["p1:chosen", "p1:rejected"] and refs == [None]
