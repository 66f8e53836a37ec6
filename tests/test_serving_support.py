"""Shared helpers of the serving tests (no tests here): a tiny checkpoint, images, servers, references.

Built once per test session and shared by the serving test modules, which import them (pytest puts
this folder on sys.path).
"""

from __future__ import annotations

import atexit
import base64
import io
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from llavakit.serving.background import ServerProcess

MODEL_NAME = "tiny-ov"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Model work in the test process with one torch thread, restored after the module.

    On two busy cores, intra-op threads for a tiny model only fight the HTTP server and the clients
    (measured: 20x slower decoding). Modules that run the model import this fixture.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="llavakit-serving-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def tiny_checkpoint() -> Path:
    """A tiny transformers llava_onevision checkpoint (SigLIP + Qwen2, 4x4 tokens per crop)."""
    from llavakit.tiny.checkpoints import build_onevision

    return build_onevision(workdir() / MODEL_NAME)


@cache
def tiny_model():
    import llavakit

    return llavakit.load(tiny_checkpoint())


def picture(seed: int, width: int, height: int) -> Image.Image:
    """A random RGB picture: every seed gives a different answer from the random model."""
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def data_url(image: Image.Image | bytes, fmt: str = "PNG") -> str:
    raw = image if isinstance(image, bytes) else encoded(image, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(raw).decode()}"


def image_part(image: Image.Image, fmt: str = "PNG") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(image, fmt)}}


def user(*parts) -> list[dict]:
    """One user message of OpenAI content parts (strings become text parts)."""
    return [{"role": "user", "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]}]


def conversation(*parts) -> list[dict]:
    """One user message in llavakit's own parts (strings become text parts), for the Python API."""
    return [{"role": "user", "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]}]


def picture_part(seed: int, width: int, height: int) -> dict:
    return {"type": "image", "image": picture(seed, width, height)}


# Prompts of different lengths and image counts (none, one, two) for the engine's tests.
CONVERSATIONS = [
    conversation(picture_part(1, 64, 48), "What is shown?"),
    conversation("Hello! How are you?"),
    conversation(picture_part(2, 30, 90), picture_part(3, 20, 20), "Compare the two pictures in detail, please."),
    conversation(picture_part(4, 200, 120), "Describe."),
]


def server_process(*flags: str) -> ServerProcess:
    """``llavakit serve`` for the tiny checkpoint in a child process, its log in the work folder."""
    return ServerProcess(tiny_checkpoint(), "--served-model-name", MODEL_NAME, "--log-level", "warning",
                         "--threads", "1",
                         *flags,
                         log=workdir() / f"server-{time.monotonic_ns()}.log")


def hf_reference(model_dir: Path, conversation: list[dict], images: list[Image.Image], max_new_tokens: int):
    """transformers' own processor and greedy ``generate``: (prompt tokens, new token ids, text)."""
    import torch
    import transformers
    from transformers import (
        AutoTokenizer,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    # The processor's class check needs torchvision, which is not installed: skip the check.
    transformers.processing_utils.ProcessorMixin.check_argument_for_proper_class = lambda *a, **k: None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(model_dir), tokenizer=tokenizer,
        num_image_tokens=16, vision_feature_select_strategy="full", chat_template=tokenizer.chat_template,
    )
    model = _hf_model(str(model_dir), LlavaOnevisionForConditionalGeneration)
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    # A nested list marks the images as one sample's (multi-image: one padded crop each).
    inputs = processor(text=[text], images=[list(images)] if images else None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    return inputs["input_ids"].shape[1], new, tokenizer.decode([t for t in new if t != eos], skip_special_tokens=True)


@cache
def _hf_model(path: str, cls):
    return cls.from_pretrained(path).eval()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def read_events(response: httpx.Response) -> list:
    """The JSON payloads of a server-sent event stream, with "[DONE]" kept as a string."""
    import json

    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_texts(events: list, n: int = 1) -> list[str]:
    texts = [""] * n
    for event in events:
        if isinstance(event, dict):
            for choice in event.get("choices", []):
                texts[choice["index"]] += choice["delta"].get("content") or ""
    return texts


def encode_mp4(frames: list[Image.Image], fps: int = 4) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def in_thread_server(**settings):
    """The app for the tiny model under uvicorn in a thread, with ServerSettings overrides."""
    from llavakit.serving.app import create_app
    from llavakit.serving.background import BackgroundServer
    from llavakit.serving.settings import ServerSettings

    settings = ServerSettings(**{"model_name": MODEL_NAME, "max_model_len": 8192, **settings})
    return BackgroundServer(create_app(tiny_model(), settings))


def one_bit_png(width: int, height: int) -> bytes:
    """A few kilobytes that decode to width*height pixels (75 MB of RGB at 5000x5000)."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, "PNG")
    return out.getvalue()


def process_memory_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process, from /proc."""
    import re

    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))


class DribblingHost:
    """A loopback web server that sends a PNG's headers at once, then one byte every 0.3 s: never idle
    long enough for a read timeout. ``with DribblingHost() as url: ...``"""

    def __enter__(self) -> str:
        import http.server
        import threading

        class Dribble(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        time.sleep(0.3)
                except OSError:
                    pass  # the server gave up on us, as it should

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dribble)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/slow.png"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
