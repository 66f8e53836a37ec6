"""The seeds' ablation knobs are configuration: each changes token counts exactly as documented
(hand-computed here), and the model still runs and fills every placeholder."""

from __future__ import annotations

import pytest
import torch

import llavakit
from conftest import random_image
from llavakit import layout
from llavakit.api import Llava
from llavakit.errors import LlavakitError

# Tiny tower: 30 px crops, patch 7 -> T = 4 tokens per side, 16 per crop; pinpoints up to 6x6.
# A 600x520 (h x w) image takes the 6x6 grid: stitched 24x24, unpadded to 24x20 (520*24/600 = 20.8 -> 20,
# pad 2 each side). anyres_max_9: ratio sqrt(480 / (9*16)) = 1.826 -> (24 // 1.826, 20 // 1.826) = (13, 10).
IMAGE = (600, 520)
CASES = {
    "default": ({}, 16 + 13 * 10 + 13),
    "threshold_off": ({"max_grids": None}, 16 + 24 * 20 + 24),
    # ratio sqrt(480 / (4*16)) = 2.7386 -> (24 // 2.7386, 20 // 2.7386) = (8, 7)
    "max_grids_4": ({"max_grids": 4}, 16 + 8 * 7 + 8),
    "wide_margin": ({"reduce_margin": 2.0}, 16 + 24 * 20 + 24),  # ratio 1.826 <= 2.0: kept
    "adaptive_avg": ({"reduce_method": "adaptive_avg"}, 16 + 13 * 10 + 13),
    "before_projector": ({"reduce_position": "before_projector"}, 16 + 13 * 10 + 13),
    # best canvas 60x60 -> 2x2 grid, map 8x8; unpad 520*8/600 = 6.93 -> 6, pad 1 -> 8x6; ratio < 1.1
    "fewer_grids_at_inference": ({"grid_pinpoints": "(1x1),...,(2x2)"}, 16 + 8 * 6 + 8),
    "newline_once": ({"image_newline": "image"}, 16 + 13 * 10 + 1),
    "no_newline": ({"image_newline": "none"}, 16 + 13 * 10),
}


def _variant(base: Llava, **visual) -> Llava:
    config = base.config.model_copy(update={"visual": base.config.visual.model_copy(update=visual)})
    config = type(config).model_validate(config.model_dump())  # re-validate the combination
    torch.manual_seed(0)
    return Llava.from_config(config, base.tokenizer)


@pytest.fixture(scope="module")
def base(onevision_dir):
    return llavakit.load(onevision_dir)


@pytest.mark.parametrize("case", list(CASES))
def test_image_knobs_change_counts_as_documented(base, case):
    update, count = CASES[case]
    model = _variant(base, **update)
    conversation = [{"role": "user", "content": [{"type": "image", "image": random_image(*IMAGE, seed=1)},
                                                 {"type": "text", "text": "What?"}]}]
    inputs = model.prepare([conversation])
    item = inputs.visual_items[0]
    assert layout.token_count(item, model.config.visual, 4) == count
    assert int((inputs.input_ids == model.config.image_token_id).sum()) == count
    with torch.no_grad():
        logits = model.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits
    assert torch.isfinite(logits).all()


def test_reduction_method_and_position_change_the_vectors_not_the_count(base):
    conversation = [{"role": "user", "content": [{"type": "image", "image": random_image(*IMAGE, seed=2)}]}]
    outputs = {}
    for name, update in {"bilinear": {}, "avg": {"reduce_method": "adaptive_avg"},
                         "before": {"reduce_position": "before_projector"}}.items():
        model = _variant(base, **update)
        model.model.load_state_dict(base.model.state_dict())  # same weights, different packing
        inputs = model.prepare([conversation])
        with torch.no_grad():
            outputs[name] = model.model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items)
    assert outputs["bilinear"].shape == outputs["avg"].shape == outputs["before"].shape
    assert not torch.allclose(outputs["bilinear"], outputs["avg"])
    assert not torch.allclose(outputs["bilinear"], outputs["before"])


@pytest.mark.parametrize(
    "update, per_video",
    [
        ({}, 8 * 2 * 2 + 1),  # 8 frames, 4x4 pooled by 2 -> 2x2, one newline for the video
        ({"video_frames": 5}, 5 * 4 + 1),
        ({"video_pool_factor": 1}, 8 * 16 + 1),  # no pooling
        ({"video_pool_factor": 3}, 8 * 2 * 2 + 1),  # ceil(4/3) = 2
        ({"video_pool_method": "adaptive_avg"}, 8 * 4 + 1),
        ({"video_newline": "frame"}, 8 * 4 + 8),
        ({"video_newline": "row"}, 8 * 4 + 8 * 2),
        ({"video_newline": "none"}, 8 * 4),
    ],
)
def test_video_knobs(base, update, per_video):
    model = _variant(base, **{"video_frames": 8, **update})
    frames = [random_image(40, 60, seed=i) for i in range(model.config.visual.video_frames)]
    conversation = [{"role": "user", "content": [{"type": "video", "video": frames},
                                                 {"type": "text", "text": "Which way?"}]}]
    inputs = model.prepare([conversation])
    assert int((inputs.input_ids == model.config.video_token_id).sum()) == per_video
    with torch.no_grad():
        out = model.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items)
    assert torch.isfinite(out.logits).all()


def test_multi_image_policy_is_configurable(base):
    images = [random_image(60, 200, seed=3), random_image(90, 30, seed=4)]
    conversation = [{"role": "user", "content": [{"type": "image", "image": im} for im in images]}]
    padded = base.prepare([conversation])
    assert [i.kind for i in padded.visual_items] == ["single", "single"]
    assert int((padded.input_ids == base.config.image_token_id).sum()) == 2 * (16 + 1)
    tiled = _variant(base, multi_image_mode="anyres", multi_image_newline="row").prepare([conversation])
    assert [i.kind for i in tiled.visual_items] == ["anyres", "anyres"]


def _video_question(frames: int) -> list[dict]:
    video = [random_image(40, 60, seed=i) for i in range(frames)]
    return [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "Which way?"}]}]


def test_visual_settings_change_at_inference_keeping_the_weights(onevision_dir, tmp_path):
    """The seeds' evaluation-time frame count: a model asked about more frames than it trained with."""
    model = llavakit.load(onevision_dir)
    model.set_visual(video_frames=4, video_pool_factor=1)
    weights = model.model.multi_modal_projector.state_dict()
    conversation = _video_question(16)
    assert int((model.prepare([conversation]).input_ids == model.config.video_token_id).sum()) == 4 * 16 + 1

    model.set_visual(video_frames=8)
    inputs = model.prepare([conversation])
    assert int((inputs.input_ids == model.config.video_token_id).sum()) == 8 * 16 + 1
    assert model.model.config.visual.video_frames == 8 and model.config.visual.video_pool_factor == 1
    assert all(torch.equal(a, b) for a, b in zip(weights.values(), model.model.multi_modal_projector.state_dict().values()))
    with torch.no_grad():
        logits = model.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits

    reloaded = llavakit.load(model.save(tmp_path / "eight-frames"))  # the settings are the saved model's now
    assert reloaded.config.visual.video_frames == 8
    again = reloaded.prepare([conversation])
    with torch.no_grad():
        same = reloaded.model(again.input_ids, again.attention_mask, again.pixel_values, again.visual_items).logits
    assert torch.allclose(logits, same, atol=1e-5)


def test_unknown_or_invalid_visual_settings_are_refused_naming_them(onevision_dir):
    model = llavakit.load(onevision_dir)
    with pytest.raises(LlavakitError, match="visual setting video_frame: unknown"):
        model.set_visual(video_frame=8)
    with pytest.raises(LlavakitError, match="visual setting video_frames: .*greater than or equal to 1"):
        model.set_visual(video_frames=0)
    assert model.config.visual.video_frames == llavakit.load(onevision_dir).config.visual.video_frames
