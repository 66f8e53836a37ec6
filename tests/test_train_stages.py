"""Stages train exactly the intended parameters (bit for bit), and what cannot work is refused
before training starts."""

from __future__ import annotations

import re

import pytest
import torch

import llavakit
from llavakit.tiny import checkpoints
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from train_fixtures import base_config, write_caption_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=16, text_only=4)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return checkpoints.build_parts(tmp_path_factory.mktemp("parts"))


def _build_spec(parts):
    vision, llm = parts
    return {"vision": {"pretrained": str(vision)}, "llm": {"pretrained": str(llm)},
            "visual": {"grid_pinpoints": "(1x1),...,(2x2)"}}


def _train(config: dict):
    trainer = Trainer(build_config(config))
    trainer.setup()
    before = {k: v.detach().clone() for k, v in trainer.unwrapped().state_dict().items()}
    trainer.run()
    after = trainer.unwrapped().state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return trainer, before, changed


def _keys(state, prefix):
    return {k for k in state if k.startswith(prefix)}


def test_stage1_trains_exactly_the_connector(data, parts, tmp_path):
    config = base_config(data, tmp_path / "run", stage="stage1", model={"build": _build_spec(parts)})
    trainer, before, changed = _train(config)
    connector = _keys(before, "multi_modal_projector.") | {"image_newline"}
    assert changed == connector
    lrs = {g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {0.0} or max(lrs) <= 1e-3  # the preset's 1e-3 (decayed by the schedule)
    assert trainer.config.data.settings.template == "plain"


def test_stage1_saves_the_projector_alone_and_it_loads(data, parts, tmp_path):
    config = base_config(data, tmp_path / "run", stage="stage1", model={"build": _build_spec(parts)},
                         save={"projector_only": True})
    trainer, _, _ = _train(config)
    saved = tmp_path / "run" / "model"
    from safetensors.torch import load_file

    assert set(load_file(str(saved / "model.safetensors"))) == {
        "image_newline", "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
        "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"}
    loaded = llavakit.load(saved)
    trained = trainer.unwrapped().state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.model.state_dict().items())


def test_stage2_trains_everything_the_model_reads(data, onevision_dir, tmp_path):
    config = base_config(data, tmp_path / "run", model={"checkpoint": str(onevision_dir)})
    trainer, before, changed = _train(config)
    unused = {k for k in before if k.startswith(("vision_tower.head.", "vision_tower.post_layernorm."))}
    assert unused and not (changed & unused)  # SigLIP's pooling head is never read: frozen
    assert changed == set(before) - unused - {"language_model.model.rotary_emb.inv_freq"}
    rates = {name_lr for name_lr in trainer.plan_params if name_lr.name.startswith("vision_tower.")}
    assert {a.lr for a in rates} == {2e-6}
    assert {a.lr for a in trainer.plan_params if not a.name.startswith("vision_tower.")} == {1e-5}


@pytest.mark.parametrize("source", ["parts", "next"])
def test_tower_layers_after_the_feature_layer_are_frozen(data, parts, next_dir, tmp_path, source):
    """feature_layer -2 (the default, and NeXT's CLIP): the tower's last layer is never read, gets
    no gradient, and so is not trainable (FSDP could not resume a parameter without optimizer state)."""
    model = {"build": _build_spec(parts)} if source == "parts" else {"checkpoint": str(next_dir)}
    trainer, before, changed = _train(base_config(data, tmp_path / "run", model=model))
    vision = trainer.unwrapped().config.vision
    assert vision.feature_layer == -2
    layers = vision.hf_config["num_hidden_layers"]
    last, read = ({k for k in before if re.match(rf"vision_tower\.(vision_model\.)?encoder\.layers\.{i}\.", k)}
                  for i in (layers - 1, layers - 2))
    assert last and not (changed & last)
    assert read and read <= changed
    assert not {a.name for a in trainer.plan_params} & last


def test_rules_as_data_freeze_what_they_name(data, onevision_dir, tmp_path):
    rules = [{"pattern": r"^language_model\.", "frozen": True}, {"pattern": r"^vision_tower\.", "frozen": True},
             {"pattern": ".", "lr": 1e-4}]
    config = base_config(data, tmp_path / "run", model={"checkpoint": str(onevision_dir)}, trainable=rules)
    _, before, changed = _train(config)
    assert changed == _keys(before, "multi_modal_projector.") | {"image_newline"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"trainable": [{"pattern": ".", "frozen": True}]}, "no parameter is trainable"),
        ({"data": {"sources": [{"path": "DATA"}], "settings": {"template": "llama3"}}}, "llama3"),
        ({"data": {"sources": [{"path": "DATA"}], "settings": {"max_length": 8, "on_error": "skip"}}},
         "no usable sample"),
        ({"global_batch_size": 400}, "cannot fill one global batch"),
        ({"stage": "stage9"}, "stage 'stage9' is unknown"),
    ],
)
def test_what_cannot_work_is_refused_before_training(data, onevision_dir, tmp_path, overrides, message):
    config = base_config(data, tmp_path / "run", model={"checkpoint": str(onevision_dir)})
    if "data" in overrides:
        overrides["data"]["sources"][0] = {"path": str(data), "image_folder": str(data.parent / "images")}
    config.update(overrides)
    with pytest.raises(Exception) as error:
        Trainer(build_config(config)).run()
    assert message in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
