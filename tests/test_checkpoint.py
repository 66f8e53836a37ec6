"""Checkpoint interop: the three key layouts, native save, export to transformers, bad checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import llavakit
from conftest import random_image
from llavakit.checkpoint import io, layouts
from llavakit.errors import CheckpointError


def _conversation():
    return [{"role": "user", "content": [{"type": "image", "image": random_image(80, 130, seed=7)},
                                         {"type": "text", "text": "What is it?"}]}]


def _logits(model):
    inputs = model.prepare([_conversation()])
    with torch.no_grad():
        return model.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits


def _rewrite(source, target, rename):
    shutil.copytree(source, target)
    state = load_file(str(source / "model.safetensors"))
    save_file({rename(k): v for k, v in state.items()}, str(target / "model.safetensors"))
    return target


def _in_memory(key):  # transformers 5 in-memory names
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    return "model." + key


def _hub_4x(key):  # transformers 4.4x hub names: the vision tower keeps its vision_model level
    return "vision_tower.vision_model." + key[len("vision_tower."):] if key.startswith("vision_tower.") else key


def test_transformers_saves_the_hub_layout(onevision_dir):
    keys = load_file(str(onevision_dir / "model.safetensors")).keys()
    assert layouts.detect_layout(keys) == "hub"


@pytest.mark.parametrize("rename", [_in_memory, _hub_4x], ids=["in_memory", "hub_4x"])
def test_every_layout_loads_to_identical_tensors(onevision_dir, tmp_path, rename):
    reference = llavakit.load(onevision_dir)
    variant = llavakit.load(_rewrite(onevision_dir, tmp_path / "variant", rename))
    ref_state, var_state = reference.model.state_dict(), variant.model.state_dict()
    assert ref_state.keys() == var_state.keys()
    assert all(torch.equal(ref_state[k], var_state[k]) for k in ref_state)


def test_original_llava_next_layout_loads(onevision_dir, tmp_path):
    """The research code's layout: mm_* config keys, model.mm_projector.{0,2}, a separate tower dir."""
    reference = llavakit.load(onevision_dir)
    hf = json.loads((onevision_dir / "config.json").read_text())
    tower_dir = tmp_path / "siglip"
    tower_dir.mkdir()
    (tower_dir / "config.json").write_text(json.dumps({**hf["vision_config"], "num_hidden_layers": 3}))
    target = tmp_path / "original"
    target.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(onevision_dir / name, target / name)
    config = {**hf["text_config"], "model_type": "llava_qwen", "mm_projector_type": "mlp2x_gelu",
              "mm_vision_tower": str(tower_dir), "image_aspect_ratio": "anyres_max_9",
              "image_grid_pinpoints": [[w, h] for h, w in hf["image_grid_pinpoints"]],
              "mm_patch_merge_type": "spatial_unpad", "mm_vision_select_layer": -2}
    (target / "config.json").write_text(json.dumps(config))

    def original(key):
        if key.startswith("multi_modal_projector.linear_"):
            index, rest = key[len("multi_modal_projector.linear_"):].split(".", 1)
            return f"model.mm_projector.{(int(index) - 1) * 2}.{rest}"
        if key.startswith("vision_tower."):
            return "model.vision_tower.vision_tower.vision_model." + key[len("vision_tower."):]
        if key == "image_newline":
            return "model.image_newline"
        return key[len("language_model."):]

    state = load_file(str(onevision_dir / "model.safetensors"))
    converted = {original(k): v for k, v in state.items() if ".head." not in k}
    assert layouts.detect_layout(converted) == "original"
    save_file(converted, str(target / "model.safetensors"))
    loaded = llavakit.load(target)
    # the tower config said 3 layers, the weights hold 2: the weights win (OneVision dropped a layer)
    assert loaded.config.vision.hf_config["num_hidden_layers"] == 2
    assert torch.allclose(_logits(loaded), _logits(reference), atol=1e-5)


def test_native_save_export_round_trip_and_transformers_reads_the_export(onevision_dir, tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    original = llavakit.load(onevision_dir)
    native = llavakit.load(original.save(tmp_path / "native"))
    exported_dir = native.export(tmp_path / "exported")
    exported = llavakit.load(exported_dir)
    for model in (native, exported):
        state = model.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in original.model.state_dict().items())
    assert layouts.detect_layout(load_file(str(exported_dir / "model.safetensors")).keys()) == "hub"
    assert any(k.startswith("vision_tower.vision_model.") for k in load_file(str(exported_dir / "model.safetensors")))
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(exported_dir).eval()
    inputs = original.prepare([_conversation()])
    with torch.no_grad():
        reference = hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                       pixel_values=inputs.pixel_values[None], image_sizes=torch.tensor([[80, 130]])).logits
    assert (reference - _logits(original)).abs().max().item() < 1e-4


def test_export_refuses_what_transformers_cannot_express(onevision_dir, tmp_path):
    model = llavakit.load(onevision_dir)
    model.model.config = model.config.model_copy(
        update={"visual": model.config.visual.model_copy(update={"reduce_method": "adaptive_avg"})}
    )
    with pytest.raises(CheckpointError, match="reduce_method"):
        io.export_hf(model.model, model.tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_and_misshaped_weights_are_named(onevision_dir, tmp_path):
    state = load_file(str(onevision_dir / "model.safetensors"))
    missing = _rewrite(onevision_dir, tmp_path / "missing", lambda k: k)
    save_file({k: v for k, v in state.items() if "linear_2" not in k}, str(missing / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing weights: multi_modal_projector.linear_2"):
        llavakit.load(missing)
    wrong = _rewrite(onevision_dir, tmp_path / "wrong", lambda k: k)
    state["image_newline"] = torch.zeros(7)
    save_file(state, str(wrong / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"image_newline: checkpoint \(7,\), model \(32,\)"):
        llavakit.load(wrong)


def _damaged(source, target, name, content: bytes):
    shutil.copytree(source, target)
    (target / name).write_bytes(content)
    return target


def test_unreadable_checkpoint_files_are_named(onevision_dir, tmp_path):
    """A truncated weights file or a config that is not JSON: one CheckpointError naming the file."""
    weights = (onevision_dir / "model.safetensors").read_bytes()
    cut = _damaged(onevision_dir, tmp_path / "cut", "model.safetensors", weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=rf"^{cut / 'model.safetensors'}: not a readable safetensors file"):
        llavakit.load(cut)
    text = _damaged(onevision_dir, tmp_path / "text", "config.json", b'{"model_type": "llava_onevision",')
    with pytest.raises(CheckpointError, match=rf"^{text / 'config.json'}: not valid JSON \(Expecting"):
        llavakit.load(text)
    latin = _damaged(onevision_dir, tmp_path / "latin", "preprocessor_config.json", b'{"name": "caf\xe9"}')
    with pytest.raises(CheckpointError, match=rf"^{latin / 'preprocessor_config.json'}: not UTF-8 text"):
        llavakit.load(latin)
    listed = _damaged(onevision_dir, tmp_path / "listed", "config.json", b"[1, 2]")
    with pytest.raises(CheckpointError, match=rf"^{listed / 'config.json'}: holds a JSON list, not an object"):
        llavakit.load(listed)
    sharded = _damaged(onevision_dir, tmp_path / "sharded", "model.safetensors.index.json", b"{")
    with pytest.raises(CheckpointError, match=rf"^{sharded / 'model.safetensors.index.json'}: not valid JSON"):
        llavakit.load(sharded)
    native = io.save(llavakit.load(onevision_dir).model, llavakit.load(onevision_dir).tokenizer, tmp_path / "native")
    (native / "llavakit_config.json").write_text("{'vision': None}")
    with pytest.raises(CheckpointError, match=rf"^{native / 'llavakit_config.json'}: not valid JSON"):
        llavakit.load(native)
    bins = _damaged(onevision_dir, tmp_path / "bins", "pytorch_model.bin", b"PK\x03\x04 cut short")
    (bins / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=rf"^{bins / 'pytorch_model.bin'}: not a readable PyTorch weights file"):
        llavakit.load(bins)


def test_hub_id_resolves_from_the_local_cache(onevision_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--onevision" / "snapshots" / "0123abcd"
    shutil.copytree(onevision_dir, snapshot)
    (cache / "models--tiny--onevision" / "refs").mkdir()
    (cache / "models--tiny--onevision" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = llavakit.load("tiny/onevision")
    assert torch.equal(model.model.image_newline, llavakit.load(onevision_dir).model.image_newline)
    with pytest.raises(CheckpointError, match="not-there/nothing"):
        llavakit.load("not-there/nothing")


def test_atomic_save_leaves_no_partial_directory(onevision_dir, tmp_path, monkeypatch):
    model = llavakit.load(onevision_dir)
    target = tmp_path / "ckpt"
    model.save(target)
    before = sorted(p.name for p in target.iterdir())

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model.tokenizer, "save_pretrained", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save(target)
    assert sorted(p.name for p in target.iterdir()) == before  # old checkpoint intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging left behind
