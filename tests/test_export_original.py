"""`export --layout original`: the LLaVA-NeXT research layout (what SGLang reads), round trip and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import llavakit
from test_checkpoint import _logits
from llavakit.checkpoint import layouts
from llavakit.cli import main
from llavakit.errors import CheckpointError

# What SGLang's LLaVA models read, from sglang python/sglang/srt/models/llava.py
# (LlavaBaseForCausalLM.load_weights, LlavaLlamaForCausalLM, LlavaQwenForCausalLM):
SGLANG_ARCHITECTURES = {"llama": "LlavaLlamaForCausalLM", "qwen2": "LlavaQwenForCausalLM"}
SGLANG_CONFIG_KEYS = ("mm_vision_tower", "mm_vision_select_layer", "mm_vision_select_feature", "mm_patch_merge_type",
                      "image_aspect_ratio", "image_grid_pinpoints", "mm_hidden_size", "hidden_size",
                      "image_token_index")
SGLANG_SELECT_FEATURES = ("default", "patch", "full", "cls_patch")
# load_weights renames checkpoint prefixes to its parameters; every other weight goes to the LLM's loader.
SGLANG_RENAMES = {
    "model.mm_projector.0": "multi_modal_projector.linear_1",
    "model.mm_projector.2": "multi_modal_projector.linear_2",
    "model.vision_tower.vision_tower": "vision_tower",
    "model.image_newline": "language_model.model.image_newline",
}
# The tower is built with {CLIP,Siglip}VisionModel.from_pretrained(mm_vision_tower), chosen by this word in the path.
SGLANG_TOWER_WORDS = ("clip", "siglip")
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")




def _pad_square(llava15_dir, directory):  # LLaVA-1.5 as the research code runs it (image_aspect_ratio "pad")
    model = llavakit.load(llava15_dir)
    visual = model.config.visual.model_copy(update={"image_mode": "pad_square", "multi_image_mode": "pad_square"})
    model.model.config = model.config.model_copy(update={"visual": visual})
    return llavakit.load(model.save(directory))


def test_original_round_trip_keeps_tensors_and_logits(onevision_dir, tmp_path):
    reference = llavakit.load(onevision_dir)
    first_dir = reference.export(tmp_path / "first", layout="original")
    first = llavakit.load(first_dir)
    second_dir = first.export(tmp_path / "second", layout="original")
    second = llavakit.load(second_dir)
    first_file, second_file = load_file(str(first_dir / "model.safetensors")), load_file(str(second_dir / "model.safetensors"))
    assert layouts.detect_layout(first_file) == "original"
    assert first_file.keys() == second_file.keys()
    assert all(torch.equal(first_file[k], second_file[k]) for k in first_file)
    ref_state = reference.model.state_dict()
    for model in (first, second):
        state = model.model.state_dict()
        assert state.keys() == ref_state.keys()
        assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert torch.equal(_logits(first), _logits(second))
    assert torch.allclose(_logits(first), _logits(reference), atol=1e-5)
    assert first.config.visual == reference.config.visual


def test_original_round_trip_of_a_clip_llama_model(llava15_dir, tmp_path):
    reference = _pad_square(llava15_dir, tmp_path / "pad")
    loaded = llavakit.load(reference.export(tmp_path / "out", layout="original"))
    assert loaded.config.vision.feature_layer == reference.config.vision.feature_layer == -2
    assert torch.allclose(_logits(loaded), _logits(reference), atol=1e-5)


@pytest.mark.parametrize("fixture", ["onevision_dir", "llava15_dir"])
def test_export_has_the_names_sglang_reads(fixture, request, tmp_path):
    from transformers import AutoModel

    model = llavakit.load(request.getfixturevalue(fixture))
    if fixture == "llava15_dir":
        model = _pad_square(request.getfixturevalue(fixture), tmp_path / "pad")
    out = model.export(tmp_path / "out", layout="original")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [SGLANG_ARCHITECTURES[model.config.llm.hf_config["model_type"]]]
    assert all(key in config for key in SGLANG_CONFIG_KEYS)
    assert config["mm_vision_select_feature"] in SGLANG_SELECT_FEATURES
    assert config["mm_hidden_size"] == model.config.vision.hf_config["hidden_size"]
    assert config["image_token_index"] == model.tokenizer.convert_tokens_to_ids("<image>")
    assert any(word in config["mm_vision_tower"] for word in SGLANG_TOWER_WORDS)
    weights = load_file(str(out / "model.safetensors"))
    ours = {"multi_modal_projector.linear_1", "multi_modal_projector.linear_2", "vision_tower.vision_model",
            "language_model.model.image_newline"}
    for name in weights:
        sglang_name = next((name.replace(old, new) for old, new in SGLANG_RENAMES.items() if name.startswith(old)), None)
        if sglang_name is None:
            assert name.startswith(LLM_PREFIXES), name
        else:
            assert any(sglang_name.startswith(p) for p in ours), name
    assert ("model.image_newline" in weights) == ("unpad" in config["mm_patch_merge_type"])
    # the tower folder mm_vision_tower names loads as a transformers vision model with the same weights
    tower = AutoModel.from_pretrained(config["mm_vision_tower"])
    assert type(tower).__name__ == {"siglip_vision_model": "SiglipVisionModel",
                                    "clip_vision_model": "CLIPVisionModel"}[model.config.vision.hf_config["model_type"]]
    own = model.model.vision_tower.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in tower.state_dict().items() if k in own)
    assert set(own) <= set(tower.state_dict())


def test_moved_export_finds_its_own_tower(onevision_dir, tmp_path):
    reference = llavakit.load(onevision_dir)
    out = reference.export(tmp_path / "out", layout="original")
    moved = out.rename(tmp_path / "moved")
    assert torch.allclose(_logits(llavakit.load(moved)), _logits(reference), atol=1e-5)


def test_cli_refuses_a_model_the_layout_cannot_express(llava15_dir, tmp_path, capsys):
    # the tiny LLaVA-1.5 resizes and centre-crops; the research layout only pads to a square
    assert main(["export", "--model", str(llava15_dir), "--out", str(tmp_path / "out"), "--layout", "original"]) != 0
    err = capsys.readouterr().err.strip()
    assert "image_mode='resize_crop'" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_original_layout(onevision_dir, tmp_path, capsys):
    assert main(["export", "--model", str(onevision_dir), "--out", str(tmp_path / "out"), "--layout", "original"]) == 0
    assert "original research layout" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llava_qwen"


@pytest.mark.parametrize("part, update, words", [
    ("vision", {"feature_layer": [-2, -1]}, "mm_vision_select_layer is one layer"),
    ("projector", {"bias": False}, "always has biases"),
    ("visual", {"multi_image_mode": "anyres"}, "visual.multi_image_mode='anyres'"),
])
def test_what_the_layout_cannot_express_is_refused_before_writing(onevision_dir, tmp_path, part, update, words):
    model = llavakit.load(onevision_dir)
    changed = getattr(model.config, part).model_copy(update=update)
    model.model.config = model.config.model_copy(update={part: changed})
    with pytest.raises(CheckpointError, match=None) as refused:
        model.export(tmp_path / "out", layout="original")
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
