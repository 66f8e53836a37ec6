"""Our processor against transformers' processors: token counts and pixel values, bit for bit.

Real OneVision (SigLIP-384/14, 6x6 pinpoints, anyres_max_9) and LLaVA-NeXT 2401 (CLIP-336/14,
five pinpoints) geometries; the tokenizer is tiny, the image processing is full size.
"""

from __future__ import annotations

import pytest
import torch

from conftest import hf_processor_class_check_off, random_image
from llavakit.config import LlavaConfig
from llavakit.processing.processor import LlavaProcessor, Media
from llavakit.tiny import checkpoints
from llavakit.tiny.tokenizer import train_bpe_tokenizer

SIZES = [  # (height, width)
    (15, 20), (384, 384), (500, 500), (100, 1000), (1000, 100), (1080, 1920), (1247, 1025), (1025, 1247),
    (480, 640), (768, 1024), (333, 777), (2000, 300), (37, 1200),
]


def _onevision():
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    hf_processor_class_check_off()
    tokenizer = train_bpe_tokenizer()
    pins = checkpoints.onevision_pinpoints(384)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_grid_pinpoints=pins, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    hf = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=729,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
    )
    config = LlavaConfig.model_validate({
        "vision": {"hf_config": {"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14,
                                 "hidden_size": 32}},
        "llm": {"hf_config": {"model_type": "qwen2", "hidden_size": 32}},
        "visual": {"crop_size": 384, "grid_pinpoints": "(1x1),...,(6x6)", "max_grids": 9},
    })
    return hf, LlavaProcessor(config, tokenizer)


def _next():
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    hf_processor_class_check_off()
    tokenizer = checkpoints.llama_tokenizer()
    pins = checkpoints.next_2401_pinpoints(336)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=pins
    )
    hf = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    config = LlavaConfig.model_validate({
        "vision": {"hf_config": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14,
                                 "hidden_size": 32}, "feature_layer": -2},
        "llm": {"hf_config": {"model_type": "llama", "hidden_size": 32}},
        "visual": {"crop_size": 336, "grid_pinpoints": pins, "max_grids": None,
                   "image_mean": list(image_processor.image_mean), "image_std": list(image_processor.image_std),
                   "multi_image_mode": "anyres", "multi_image_newline": "row"},
        "family": "llava_next",
    })
    return hf, LlavaProcessor(config, tokenizer)


@pytest.fixture(scope="module", params=["onevision", "next"])
def processors(request):
    return _onevision() if request.param == "onevision" else _next()


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_token_counts_and_pixels_equal_transformers(processors, size):
    hf, ours = processors
    image = random_image(*size, seed=size[0] * 7 + size[1])
    text = "<image>\nWhat is in the picture?"
    expected = hf(text=[text], images=[image], return_tensors="pt")
    got = ours([text], [[Media("image", image)]], add_special_tokens=True)
    assert got.input_ids.tolist() == expected["input_ids"].tolist()
    reference = expected["pixel_values"][0]
    assert got.pixel_values.shape == reference.shape
    assert torch.equal(got.pixel_values, reference), "pixel values differ"


def test_multi_image_pixels_and_counts_equal_transformers():
    hf, ours = _onevision()
    images = [random_image(300, 500, seed=1), random_image(640, 200, seed=2), random_image(64, 64, seed=3)]
    text = "Image 1: <image>\nImage 2: <image> and <image>\nWhich is brightest?"
    expected = hf(text=[text], images=[images], return_tensors="pt")
    got = ours([text], [[Media("image", im) for im in images]])
    assert got.input_ids.tolist() == expected["input_ids"].tolist()
    assert [item.kind for item in got.visual_items] == ["single"] * 3
    assert torch.equal(got.pixel_values, expected["pixel_values"].reshape(-1, 3, 384, 384))


def test_batch_of_samples_with_different_image_counts():
    hf, ours = _onevision()
    first, pair = random_image(700, 300, seed=4), [random_image(100, 100, seed=5), random_image(90, 160, seed=6)]
    texts = ["<image>\nDescribe.", "<image><image>\nCompare them."]
    expected = hf(text=texts, images=[[first], pair], return_tensors="pt", padding=True, padding_side="left")
    got = ours(texts, [[Media("image", first)], [Media("image", im) for im in pair]])
    assert got.input_ids.tolist() == expected["input_ids"].tolist()
    assert got.attention_mask.tolist() == expected["attention_mask"].tolist()
    assert [item.kind for item in got.visual_items] == ["anyres", "single", "single"]


def test_onevision_video_token_count_matches_transformers_formula():
    hf, ours = _onevision()
    frames = [random_image(48, 64, seed=i) for i in range(8)]
    got = ours(["<video>\nWhat happens?"], [[Media("video", frames)]])
    num = hf._get_num_multimodal_tokens(video_sizes=[(8, 48, 64)])["num_video_tokens"][0]
    assert int((got.input_ids == ours.video_token_id).sum()) == num == 8 * 196 + 1
    assert got.pixel_values.shape == (8, 3, 384, 384)
