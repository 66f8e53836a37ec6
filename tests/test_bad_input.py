"""Bad input gets a clear error that names the problem, and changes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import llavakit
from conftest import random_image
from llavakit import config as config_module
from llavakit.data import DataError, DataSettings, LlavaDataset, read_llava_file
from llavakit.errors import MediaError, PlaceholderError
from llavakit.processing.processor import Media
from llavakit.tiny.checkpoints import LLAMA_TEMPLATE
from test_data_fixtures import conversation, write_video


@pytest.fixture(scope="module")
def model(onevision_dir):
    return llavakit.load(onevision_dir)


def _ask(image):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]


def _snapshot(model):
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items())


@pytest.mark.parametrize("text, count", [("<image><image>\nTwo?", 1), ("No placeholder here.", 1), ("<image>", 2)])
def test_placeholder_count_must_match_images(model, text, count):
    images = [Media("image", random_image(20, 20, seed=i)) for i in range(count)]
    with pytest.raises(PlaceholderError, match=r"sample 0: the text has \d+ <image>"):
        model.processor([text], [images])


def _video_question(video):
    return [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "What moves?"}]}]


@pytest.mark.parametrize("family, fixture", [("llava", "llava15_dir"), ("llava_next", "next_dir")])
def test_video_for_a_model_without_video_says_so(family, fixture, request, tmp_path):
    """LLaVA-1.5 and NeXT checkpoints have no video token: the error says the model takes no video."""
    llava = llavakit.load(request.getfixturevalue(fixture))
    frames = [random_image(30, 30, seed=i) for i in range(4)]
    clip = write_video(tmp_path / "clip.mp4", frames=4)
    message = rf"this model \({family}\) does not take video: its config has no video token"
    for video in (frames, str(clip)):
        with pytest.raises(PlaceholderError, match=message):
            llava.generate(_video_question(video), max_new_tokens=2)
    with pytest.raises(PlaceholderError, match=rf"sample 0: {message}"):  # text written by hand, no template
        llava.processor(["<video>\nWhat moves?"], [[Media("video", frames)]])
    data = tmp_path / "videos.jsonl"
    data.write_text(json.dumps({"id": "v1", "video": "clip.mp4", "conversations": conversation("<video>\nQ", "A")}))
    dataset = LlavaDataset(read_llava_file(data), llava.processor, DataSettings(template="plain"))
    for step in (dataset.lengths, lambda: dataset[0]):
        with pytest.raises(DataError, match=rf"sample 'v1' .*placeholder_mismatch: video .*clip.mp4: {message}"):
            step()


def test_a_chat_template_that_drops_video_parts_is_named(onevision_dir):
    """A model that takes video, with a chat template that writes no <video>: the template is named."""
    llava = llavakit.load(onevision_dir)
    llava.tokenizer.chat_template = LLAMA_TEMPLATE  # writes <image> for image parts, nothing for video
    frames = [random_image(30, 30, seed=i) for i in range(4)]
    with pytest.raises(PlaceholderError, match="1 video parts but this model's chat template wrote 0 <video> "
                                               "placeholders: the chat template does not take videos"):
        llava.generate(_video_question(frames), max_new_tokens=2)


def test_visual_tokens_without_media_are_refused_by_the_model(model):
    ids = torch.full((1, 5), model.config.image_token_id)
    with pytest.raises(PlaceholderError, match="5 visual placeholder tokens but no images"):
        model.model(ids)


def test_unreadable_truncated_empty_and_missing_images(model, tmp_path):
    before = _snapshot(model)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good = tmp_path / "good.png"
    random_image(200, 300).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = {
        not_image: r"image 0 \(.*notes.png\): not a readable image",
        empty: r"image 0 \(.*empty.png\): not a readable image",
        truncated: r"image 0 \(.*truncated.png\): truncated or corrupt",
        tmp_path / "absent.png": r"image 0 \(.*absent.png\): file not found",
    }
    for path, message in cases.items():
        with pytest.raises(MediaError, match=message):
            model.generate(_ask(str(path)), max_new_tokens=2)
    with pytest.raises(MediaError, match="zero size 0x0"):
        model.generate(_ask(Image.new("RGB", (0, 0))), max_new_tokens=2)
    assert _unchanged(model, before)


def test_pixel_limit_is_checked_before_decoding(onevision_dir, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(big)  # 12 Mpx, a few KB on disk
    limited = llavakit.load(onevision_dir)
    limited.processor.visual = limited.config.visual.model_copy(update={"max_image_pixels": 1_000_000})
    with pytest.raises(MediaError, match=r"big.png: 4000x3000 = 12000000 pixels exceeds the limit of 1000000"):
        limited.processor.image_pixels(str(big))


def _config(**overrides):
    data = {
        "vision": {"hf_config": {"model_type": "siglip_vision_model", "image_size": 30, "patch_size": 7,
                                 "hidden_size": 32}},
        "llm": {"hf_config": {"model_type": "qwen2", "hidden_size": 32}},
        "visual": {"crop_size": 30},
    }
    for path, value in overrides.items():
        node = data
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return config_module.validate(data, "test.yaml")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"projector.type": "mlp2x_relu"}, "projector type 'mlp2x_relu' is unknown; choose 'linear' or 'mlp{N}x_gelu'"),
        ({"vision.hf_config": {"model_type": "resnet", "image_size": 30}}, "vision tower model_type 'resnet' is not supported"),
        ({"visual.crop_size": 384}, "visual.crop_size=384 but the vision tower takes 30x30"),
        ({"visual.image_mode": "pad_square"}, "image_newline='row' needs image_mode='anyres'"),
        ({"visual.grid_pinpoints": [[30, 45]]}, "multiples of the crop size 30"),
        ({"visual.video_pool_factor": 0}, "video_pool_factor"),
        ({"visual.newline_mode": "row"}, "newline_mode"),  # unknown field
        ({"vision.cls_token": "drop"}, "has no CLS token"),
    ],
)
def test_impossible_configs_say_what_is_allowed(overrides, message):
    with pytest.raises(config_module.ConfigError) as error:
        _config(**overrides)
    assert message in str(error.value)
    assert "test.yaml" in str(error.value)


def test_valid_config_round_trips(tmp_path):
    config = _config(**{"projector.type": "mlp3x_gelu", "visual.grid_pinpoints": "(1x1),...,(3x3)"})
    config.save(tmp_path)
    assert config_module.LlavaConfig.load(tmp_path) == config
    assert config.projector.depth == 3 and len(config.visual.pinpoints()) == 9
