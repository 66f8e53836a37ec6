"""Shared helpers for the data-pipeline tests: real files on disk and tiny tokenizers/processors.

Images are written with PIL, videos encoded with PyAV, JSON/JSONL/YAML written to disk; the
processor is the tiny OneVision checkpoint's (SigLIP 30 px / patch 7 -> 4x4 tokens per crop).
Visual token counts used by the tests, by hand: a multi-image crop is 4*4 + 1 newline = 17; a
30x30 single image is AnyRes 1x1: base 16 + map 4x4 + 4 row newlines = 36; a video frame is pooled
to 2x2 = 4 tokens, plus one newline per video.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import llavakit
from llavakit.processing.processor import DEFAULT_CHAT_TEMPLATE, LlavaProcessor
from llavakit.tiny.checkpoints import llama_tokenizer
from llavakit.tiny.tokenizer import SAMPLE_TEXT, train_bpe_tokenizer

MULTI_IMAGE_TOKENS = 17
SQUARE_IMAGE_TOKENS = 36

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>", "<video>"]
LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_fixture_counts_match_the_layout(processor):
    """The hand-computed counts above agree with llavakit.layout (sanity for every other test)."""
    from llavakit import layout

    visual = processor.visual
    assert processor.num_tokens(layout.plan_image(visual, (30, 30), multi_image=False)) == SQUARE_IMAGE_TOKENS
    assert processor.num_tokens(layout.plan_image(visual, (50, 20), multi_image=True)) == MULTI_IMAGE_TOKENS
    assert processor.num_tokens(layout.plan_video(visual, (32, 32), 4)) == 4 * 4 + 1


@pytest.fixture(scope="session")
def llava(onevision_dir):
    return llavakit.load(onevision_dir)


@pytest.fixture(scope="session")
def processor(llava):
    """ChatML tokenizer (EOS <|im_end|>), 4 video frames so videos stay small."""
    visual = llava.config.visual.model_copy(update={"video_frames": 4})
    return LlavaProcessor(llava.config.model_copy(update={"visual": visual}), llava.tokenizer)


def processor_with(processor: LlavaProcessor, tokenizer) -> LlavaProcessor:
    return LlavaProcessor(processor.config, tokenizer)


def vicuna_tokenizer():
    """Llama-style: <s> BOS, </s> EOS, and the 'USER: ... ASSISTANT:' Jinja template."""
    return llama_tokenizer()


def llama3_tokenizer():
    return train_bpe_tokenizer(
        texts=SAMPLE_TEXT + ["system user assistant helpful language vision"], special_tokens=LLAMA3_SPECIAL,
        eos_token="<|eot_id|>", pad_token="<|begin_of_text|>", bos_token="<|begin_of_text|>",
        chat_template=LLAMA3_JINJA,
    )


def chatml_tokenizer(chat_template: str | None = DEFAULT_CHAT_TEMPLATE):
    return train_bpe_tokenizer(chat_template=chat_template)


def write_image(path: Path, size=(30, 30), color=(200, 30, 30)) -> Path:
    """``size`` is (width, height), as PIL has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def frame_color(index: int) -> tuple[int, int, int]:
    return (index * 25) % 256, (255 - index * 25) % 256, (index * 70) % 256


def write_video(path: Path, frames: int = 10, fps: int = 5, side: int = 32) -> Path:
    """An MPEG-4 video whose frame i is one flat colour, frame_color(i)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for index in range(frames):
            array = np.full((side, side, 3), frame_color(index), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def conversation(*texts: str, style: str = "from") -> list[dict]:
    """Alternating user/assistant turns in the LLaVA ('from'/'value') or chat ('role'/'content') style."""
    if style == "from":
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def trained_runs(ids, labels) -> list[list[int]]:
    """Maximal runs of trained tokens, in order."""
    runs, current = [], []
    for token, label in zip(list(ids), list(labels)):
        if label != -100:
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])
