"""The quickstart's tiny components, trained for real on a small synthetic world: the tokenizer and
chat template, the LM's loss, the vision tower's linear probes, the cache (hits, misses, atomic
writes, killed runs), determinism, and a LLaVA model built from both parts generating an answer."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, SiglipVisionModel

from llavakit.api import Llava
from llavakit.checkpoint.components import build_from_parts
from llavakit.quickstart import (
    ComponentSettings,
    LanguageSettings,
    VisionSettings,
    prepare_components,
)
from llavakit.quickstart.cache import lookup, remove_stale_partials
from llavakit.synth import WorldSettings, generate_world

SMALL_WORLD = WorldSettings(stage1_captions=160, train_per_task=16, eval_per_task=4, dev_per_task=4,
                            paraphrase_per_task=4)
SETTINGS = ComponentSettings(
    vision=VisionSettings(steps=120, batch_size=64, probe_images=200),
    language=LanguageSettings(steps=40, batch_size=4, seq_len=128),
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL_WORLD, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="module")
def parts(world, cache):
    return prepare_components(world, cache, SETTINGS, progress=False)


# ---- language model ----------------------------------------------------------------------------


def test_tokenizer_round_trips_the_corpus_and_keeps_special_tokens_whole(world, parts):
    tokenizer = AutoTokenizer.from_pretrained(parts.llm_dir)
    lines = (world / "text_corpus.txt").read_text(encoding="utf-8").splitlines()
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode(ids) for ids in encoded] == lines
    for token in SPECIALS:
        ids = tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids and len(tokenizer.tokenize(token)) == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert 300 < len(tokenizer) <= SETTINGS.language.vocab_size


def test_chat_template_renders_a_conversation_with_an_image_part(parts):
    tokenizer = AutoTokenizer.from_pretrained(parts.llm_dir)
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the object?"}]},
        {"role": "assistant", "content": "red"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text == "<|im_start|>user\n<image>\nWhat color is the object?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1
    # every turn's header is three tokens: the role names are words of the tokenizer
    assert tokenizer.tokenize("<|im_start|>assistant\n") == ["<|im_start|>", "assistant", "Ċ"]
    assert tokenizer.tokenize("<|im_start|>user\n") == ["<|im_start|>", "user", "Ċ"]


def test_language_model_loss_drops_well_below_its_start(parts):
    metrics = parts.metrics["language"]
    assert metrics["initial_val_loss"] > 5.0  # about log(vocab) for random weights
    assert metrics["val_loss"] < 0.6 * metrics["initial_val_loss"]
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["val_loss"], rel=1e-3)
    assert metrics["loss_curve"][-1][1] < metrics["loss_curve"][0][1]


# ---- vision tower ------------------------------------------------------------------------------


def test_vision_tower_loads_as_a_siglip_tower(parts):
    tower = SiglipVisionModel.from_pretrained(parts.vision_dir)
    assert (tower.config.image_size, tower.config.patch_size) == (64, 16)
    assert tower.config.vision_use_head is False
    out = tower(pixel_values=torch.zeros(1, 3, 64, 64), output_hidden_states=True)
    assert out.hidden_states[-1].shape == (1, 16, SETTINGS.vision.hidden_size)
    assert (parts.vision_dir / "preprocessor_config.json").is_file()


def test_vision_probe_beats_chance_by_a_wide_margin(parts):
    probe = parts.metrics["vision"]["probe"]
    assert probe["color"]["trained"] >= 0.8  # chance 1/7
    assert probe["shape"]["trained"] >= probe["shape"]["chance"] + 0.1  # chance 1/5
    assert probe["shape"]["trained"] >= probe["shape"]["untrained"] + 0.05  # learned, not just pixels
    assert probe["count"]["trained"] >= probe["count"]["chance"] + 0.1
    assert probe["shape_token"]["chance"] == probe["shape"]["chance"]  # the same labels, one token
    assert probe["letter_token"]["chance"] == 1 / 8  # reported; its value is near chance (docs/components.md)
    assert parts.metrics["vision"]["final_loss"] < parts.metrics["vision"]["initial_loss"]


def test_the_letter_probe_scenes_hold_one_tiny_letter_each_as_a_detail_crop_shows_it():
    """The letter_token probe's scenes: each a 64 px crop with one 5x7 letter of one pixel per
    glyph cell (the detail task's letter at its own resolution), inside one 16 px token, the
    letters in turn."""
    from llavakit.quickstart.probe import tiny_letter_scenes
    from llavakit.synth.vocab import BACKGROUND, GLYPHS, LETTERS

    scenes = tiny_letter_scenes(16, 64, seed=0, split=0, letter_cell=1, grid=16)
    assert scenes.pixels.shape == (16, 64, 64, 3) and scenes.classes == {"letter": 8}
    for pixels, label, box in zip(scenes.pixels, scenes.labels["letter"], scenes.boxes):
        x1, y1, x2, y2 = (round(v * 64) for v in box)
        assert (x2 - x1, y2 - y1) == (5, 7) and x1 // 16 == (x2 - 1) // 16 and y1 // 16 == (y2 - 1) // 16
        ink = (pixels != BACKGROUND).any(-1)
        glyph = np.array([[c == "#" for c in row] for row in GLYPHS[LETTERS[label]]])
        assert ink[y1:y2, x1:x2].tolist() == glyph.tolist() and ink.sum() == glyph.sum()
    assert scenes.labels["letter"].tolist() == [i % 8 for i in range(16)]


def test_the_position_term_makes_the_objects_own_token_say_where_it_is(world, parts, tmp_path):
    """Without the term the contrastive tower's tokens lose their place (the quickstart tower read
    it 0.41 from the object's token, the untrained one 0.72); with it at the quickstart's weight,
    at the default step count, the object's token reads its 3x3
    position and place is a large share of what the token carries (5.5% at weight 1.0, too little
    for the LM to learn to read)."""
    from llavakit.quickstart.vision import train_vision
    from llavakit.recipe import load_recipe

    position_weight = load_recipe("quickstart").component_settings().vision.position_weight

    assert SETTINGS.vision.position_weight == 0  # the default: off
    vision = dataclasses.replace(SETTINGS.vision, position_weight=position_weight, steps=VisionSettings().steps)
    metrics = train_vision(world, tmp_path / "tower", dataclasses.replace(SETTINGS, vision=vision), progress=False)
    with_term = metrics["probe"]["position_token"]
    without = parts.metrics["vision"]["probe"]["position_token"]  # 120 steps, no term
    assert with_term["trained"] >= 0.9 > without["trained"]
    assert with_term["trained"] >= with_term["untrained"] + 0.1
    share = metrics["position_share"]["trained"]
    assert share >= 0.1 > parts.metrics["vision"]["position_share"]["trained"]


def test_label_variance_share_is_the_between_class_share():
    from llavakit.quickstart.probe import label_variance_share

    labels = np.array([0, 0, 1, 1])
    # class means +-1 on the first axis (between-class variance 1); noise +-1 on the second (1)
    features = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert label_variance_share(features, labels) == pytest.approx(0.5)
    assert label_variance_share(features[:, :1], labels) == pytest.approx(1.0)
    assert label_variance_share(features[:, 1:], labels) == pytest.approx(0.0)


def test_center_token_pooling_reads_the_token_most_covered_by_the_box(parts):
    from llavakit.quickstart.probe import pooled_features, single_object_scenes

    tower = SiglipVisionModel.from_pretrained(parts.vision_dir)
    probe_set = single_object_scenes(4, 64, seed=0, split=0)
    features = pooled_features(tower, probe_set, layer=-1, device=torch.device("cpu"))
    with torch.no_grad():
        states = tower(pixel_values=torch.from_numpy(probe_set.pixels).permute(0, 3, 1, 2).float() / 127.5 - 1,
                       output_hidden_states=True).hidden_states[-1]
    n = 64 // tower.config.patch_size  # tokens per side
    for i, (x1, y1, x2, y2) in enumerate(probe_set.boxes):
        # the patch (n x n grid) holding most of the box, found from the box directly
        areas = {(r, c): max(0.0, min(x2, (c + 1) / n) - max(x1, c / n)) * max(0.0, min(y2, (r + 1) / n) - max(y1, r / n))
                 for r in range(n) for c in range(n)}
        row, col = max(areas, key=areas.get)
        torch.testing.assert_close(features["center"][i], states[i, row * n + col], rtol=1e-5, atol=1e-5)


# ---- cache -------------------------------------------------------------------------------------


def test_second_call_is_a_cache_hit_with_the_same_directories(world, cache, parts):
    start = time.perf_counter()
    # threads only change speed, so they are not part of the key
    again = prepare_components(world, cache, dataclasses.replace(SETTINGS, threads=1), progress=False)
    assert time.perf_counter() - start < 1.0
    assert (again.vision_dir, again.llm_dir) == (parts.vision_dir, parts.llm_dir)
    assert again.metrics["cached"] == {"vision": True, "language": True}
    assert again.metrics["vision"] == parts.metrics["vision"]


def test_a_changed_setting_retrains_only_its_component(world, cache, parts):
    changed = dataclasses.replace(SETTINGS, language=dataclasses.replace(SETTINGS.language, steps=5))
    other = prepare_components(world, cache, changed, progress=False)
    assert other.llm_dir != parts.llm_dir and other.vision_dir == parts.vision_dir
    assert other.metrics["cached"] == {"vision": True, "language": False}
    assert other.metrics["language"]["steps"] == 5


def test_a_failed_run_leaves_no_cache_entry(world, cache, parts, monkeypatch):
    def crash(world_dir, out_dir, settings, progress=True):
        (out_dir / "config.json").write_text("{}")  # half a checkpoint
        raise RuntimeError("interrupted")

    monkeypatch.setattr("llavakit.quickstart.components.train_language", crash)
    changed = dataclasses.replace(SETTINGS, language=dataclasses.replace(SETTINGS.language, steps=7))
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_components(world, cache, changed, progress=False)
    assert not list(cache.glob(".partial-*"))
    assert not [p for p in cache.glob("llm-*") if not (p / "component.json").is_file()]


def test_a_killed_run_leaves_no_cache_entry(world, tmp_path):
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        from llavakit.quickstart import ComponentSettings, VisionSettings, prepare_components
        settings = ComponentSettings(vision=VisionSettings(steps=100000, batch_size=8))
        prepare_components({str(world)!r}, {str(cache)!r}, settings, progress=False)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob(".partial-vision-*")):
            assert process.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()  # reaped, so its pid no longer counts as alive
    # no entry: only hidden files (the partial directory, the entry's build lock)
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]
    partial = list(cache.glob(".partial-vision-*"))
    assert len(partial) == 1
    key = partial[0].name.split("-")[2]
    assert lookup(cache, "vision", key) is None
    assert remove_stale_partials(cache) == partial and not partial[0].exists()


# ---- determinism and settings ------------------------------------------------------------------


def test_same_seed_gives_identical_weights(world, tmp_path):
    tiny = ComponentSettings(
        vision=VisionSettings(steps=3, batch_size=16, probe_images=10),
        language=LanguageSettings(steps=3, batch_size=2, seq_len=32),
    )
    first = prepare_components(world, tmp_path / "a", tiny, progress=False)
    second = prepare_components(world, tmp_path / "b", tiny, progress=False)
    for a, b in ((first.vision_dir, second.vision_dir), (first.llm_dir, second.llm_dir)):
        left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left)


def test_settings_are_validated_with_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionSettings(image_size=60, patch_size=8)
    with pytest.raises(ValueError, match="num_kv_heads"):
        LanguageSettings(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="scale must be > 0"):
        ComponentSettings(scale=0)
    with pytest.raises(FileNotFoundError, match="no complete synthetic world"):
        prepare_components(tmp_path, tmp_path / "cache", SETTINGS, progress=False)


# ---- integration with the LLaVA model ----------------------------------------------------------


def test_llava_built_from_the_components_generates(world, parts):
    model, tokenizer = build_from_parts({
        "vision": {"pretrained": str(parts.vision_dir), "feature_layer": parts.vision_feature_layer},
        "llm": {"pretrained": str(parts.llm_dir)},
        "visual": {"grid_pinpoints": "(1x1),...,(4x4)"},
    })
    assert model.config.visual.crop_size == 64 and model.config.tokens_per_side == 4
    assert len(tokenizer) == model.language_model.get_input_embeddings().weight.shape[0]  # nothing added
    llava = Llava(model.eval(), tokenizer)
    image = Image.open(world / "images" / "test_color_00000.png")
    out = llava.generate(
        [{"role": "user", "content": [{"type": "image", "image": image},
                                      {"type": "text", "text": "What color is the object? Answer with one word."}]}],
        max_new_tokens=4,
    )
    # the one <image> placeholder becomes the base view (16 tokens) + one crop (16 tokens and a
    # newline per row)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat color is the object? Answer with one word."}],
        tokenize=False, add_generation_prompt=True)
    assert out.prompt_tokens == len(tokenizer(text).input_ids) - 1 + 16 + 4 * (4 + 1)
    assert 1 <= len(out.token_ids) <= 4 and isinstance(out.text, str)
