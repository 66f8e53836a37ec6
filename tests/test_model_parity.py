"""Our model against transformers' models on the same tiny checkpoints: logits and greedy tokens.

float32 everywhere; logits must agree to 1e-4 (in practice they are equal), greedy generations
token for token, for single images, several images, video, text only, and batches of prompts of
different lengths (left padding).
"""

from __future__ import annotations

import pytest
import torch

import llavakit
from conftest import hf_processor_class_check_off, random_image

TOL = 1e-4


def _hf_onevision(directory):
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    hf_processor_class_check_off()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(directory), tokenizer=tokenizer,
        num_image_tokens=16, vision_feature_select_strategy="full", chat_template=tokenizer.chat_template,
    )
    return LlavaOnevisionForConditionalGeneration.from_pretrained(directory).eval(), processor


@pytest.fixture(scope="module")
def onevision(onevision_dir):
    model, processor = _hf_onevision(onevision_dir)
    return llavakit.load(onevision_dir), model, processor


def _user(*parts):
    content = []
    for part in parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        elif isinstance(part, list):
            content.append({"type": "video", "video": part})
        else:
            content.append({"type": "image", "image": part})
    return [{"role": "user", "content": content}]


def _ours_logits(ours, conversations):
    inputs = ours.prepare(conversations)
    with torch.no_grad():
        out = ours.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items)
    return inputs, out.logits


def _hf_inputs(ours, processor, conversation, images):
    text, _ = ours.processor.render(conversation)
    kwargs = {"images": [images]} if images else {}
    return processor(text=[text], return_tensors="pt", **kwargs)


CASES = {
    "single_wide": lambda: [random_image(90, 400, seed=1)],
    "single_huge_grid": lambda: [random_image(600, 520, seed=2)],  # 6x6-ish grid, anyres_max reduces it
    "single_tiny": lambda: [random_image(15, 20, seed=3)],
    "two_images": lambda: [random_image(60, 90, seed=4), random_image(120, 40, seed=5)],
    "text_only": lambda: [],
}


@pytest.mark.parametrize("case", list(CASES))
def test_onevision_logits_and_greedy_tokens_equal_transformers(onevision, case):
    ours, hf, processor = onevision
    images = CASES[case]()
    conversation = _user(*images, "What do you see? Answer briefly.")
    inputs, logits = _ours_logits(ours, [conversation])
    expected = _hf_inputs(ours, processor, conversation, images)
    assert inputs.input_ids.tolist() == expected["input_ids"].tolist()
    with torch.no_grad():
        reference = hf(**expected).logits
    assert (logits - reference).abs().max().item() < TOL
    generated = ours.generate(conversation, max_new_tokens=12)
    hf_tokens = hf.generate(**expected, max_new_tokens=12, do_sample=False)[0, expected["input_ids"].shape[1]:]
    assert generated.token_ids == hf_tokens.tolist()
    assert generated.prompt_tokens == expected["input_ids"].shape[1]


def test_onevision_video_logits_equal_transformers(onevision, tmp_path):
    ours, hf, _ = onevision
    frames = [random_image(40, 56, seed=10 + i) for i in range(6)]
    conversation = _user(frames, "Where does it move?")
    inputs, logits = _ours_logits(ours, [conversation])
    assert inputs.visual_items[0].kind == "video"
    pixel_values_videos = inputs.pixel_values[None]  # (1, frames, 3, S, S)
    with torch.no_grad():
        reference = hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                       pixel_values_videos=pixel_values_videos).logits
    assert (logits - reference).abs().max().item() < TOL


def test_video_file_decodes_through_pyav(onevision, tmp_path):
    import av
    import numpy as np

    ours, _, _ = onevision
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = np.zeros((48, 64, 3), dtype=np.uint8)
            frame[:, i * 3:i * 3 + 8] = 255  # a white bar moving right
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = ours.generate(_user_video(path), max_new_tokens=3)
    frames = ours.processor.load_video(path)
    # 20 frames in the clip, 32 in the budget: each frame is used once, none repeated
    assert len(frames.images) == 20
    # the bar moves right: its column in the sampled frames grows
    columns = [int(np.asarray(f.convert("L")).mean(axis=0).argmax()) for f in frames.images]
    assert columns == sorted(columns) and columns[-1] > columns[0]
    inputs = ours.prepare([_user_video(path)])
    assert int((inputs.input_ids == ours.config.video_token_id).sum()) == 20 * 2 * 2 + 1  # 2x2 pooled per frame
    assert out.prompt_tokens == inputs.input_ids.shape[1]


def _user_video(path):
    return [{"role": "user", "content": [{"type": "video", "video": str(path)}, {"type": "text", "text": "Go?"}]}]


def test_batch_of_different_lengths_equals_transformers_and_single_runs(onevision):
    ours, hf, processor = onevision
    conversations = [
        _user(random_image(50, 70, seed=20), "Hi?"),
        _user("A much longer question without any image, asking about many things at once?"),
        _user(random_image(200, 90, seed=21), "Describe this picture in a few words, please."),
    ]
    batched = ours.generate(conversations, max_new_tokens=10)
    singles = [ours.generate(c, max_new_tokens=10) for c in conversations]
    assert [b.token_ids for b in batched] == [s.token_ids for s in singles]
    for conversation, result in zip(conversations, batched):
        images = [p["image"] for p in conversation[0]["content"] if p["type"] == "image"]
        expected = _hf_inputs(ours, processor, conversation, images)
        reference = hf.generate(**expected, max_new_tokens=10, do_sample=False)[0, expected["input_ids"].shape[1]:]
        assert result.token_ids == reference.tolist()


def _hf_next(directory):
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    hf_processor_class_check_off()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil.from_pretrained(directory), tokenizer=tokenizer, patch_size=7,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return LlavaNextForConditionalGeneration.from_pretrained(directory).eval(), processor


def _hf_llava15(directory):
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor

    hf_processor_class_check_off()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    processor = LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(directory), tokenizer=tokenizer, patch_size=7,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration.from_pretrained(directory).eval(), processor


@pytest.mark.parametrize("family", ["next", "llava15"])
def test_next_and_llava15_logits_and_tokens_equal_transformers(family, next_dir, llava15_dir):
    directory = next_dir if family == "next" else llava15_dir
    hf, processor = _hf_next(directory) if family == "next" else _hf_llava15(directory)
    ours = llavakit.load(directory)
    for images in ([random_image(70, 150, seed=30)], [random_image(99, 41, seed=31), random_image(30, 30, seed=32)]):
        conversation = _user(*images, "What is it?")
        inputs, logits = _ours_logits(ours, [conversation])
        text, _ = ours.processor.render(conversation)
        expected = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
        assert inputs.input_ids.tolist() == expected["input_ids"].tolist()
        with torch.no_grad():
            reference = hf(**expected).logits
        assert (logits - reference).abs().max().item() < TOL
        generated = ours.generate(conversation, max_new_tokens=8)
        hf_tokens = hf.generate(**expected, max_new_tokens=8, do_sample=False)[0, expected["input_ids"].shape[1]:]
        assert generated.token_ids == hf_tokens.tolist()


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("family", ["onevision", "next", "llava15"])
def test_engine_batched_greedy_tokens_equal_transformers(family, compiled, onevision_dir, next_dir, llava15_dir):
    from llavakit.engine import EngineConfig

    directory = {"onevision": onevision_dir, "next": next_dir, "llava15": llava15_dir}[family]
    hf, processor = {"onevision": _hf_onevision, "next": _hf_next, "llava15": _hf_llava15}[family](directory)
    ours = llavakit.load(directory)
    ours.set_engine(EngineConfig(max_rows=2, max_cache_tokens=2 * 1024, compile=compiled))
    images = [random_image(70, 150, seed=40), random_image(99, 41, seed=41)]
    conversations = [_user(images[0], "What is it?"), _user(images[1], "Describe this picture in a few words.")]
    generated = ours.generate(conversations, max_new_tokens=8)
    for conversation, image, result in zip(conversations, images, generated):
        text, _ = ours.processor.render(conversation)
        extra = {} if family == "onevision" else {"add_special_tokens": False}
        expected = processor(text=[text], images=[image], return_tensors="pt", **extra)
        reference = hf.generate(**expected, max_new_tokens=8, do_sample=False)[0, expected["input_ids"].shape[1]:]
        assert result.token_ids == reference.tolist()
    assert ours.engine.forward.compiled == compiled
