"""Test support for datagen: a scripted OpenAI-compatible server on loopback and COCO-style fixtures.

``ScriptedServer`` is a real HTTP server (``http.server`` on 127.0.0.1, a free port, in a thread). It
answers ``POST /v1/chat/completions`` from a script: a function of (request, attempt) that returns a
:class:`Reply` (valid text, malformed text, an HTTP error, a body that is not JSON, a slow reply).
Each request is identified by its image (the first caption, which the fixtures make unique) and its
response type (the system prompt), and logged.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from typing_extensions import Self

from llavakit.datagen.prompts import load_prompts
from llavakit.synth import render_random_scene

SYSTEM_TO_KIND = {t.system: kind for kind, t in load_prompts().types.items()}
BOX = re.compile(r"^(?P<name>[^:\n]+): \[(?P<coords>[0-9., ]+)\]$", re.MULTILINE)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 refuses connections under load: not what we test


@dataclass
class Reply:
    status: int = 200
    text: str | None = None
    finish_reason: str = "stop"
    delay: float = 0.0
    raw_body: str | None = None  # sent as is instead of a chat completion
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    image: str  # the first line of the context: the scene's first caption
    kind: str
    context: str
    body: dict

    @property
    def key(self) -> tuple[str, str]:
        return self.image, self.kind


Script = Callable[[Request, int], Reply]


class ScriptedServer:
    def __init__(self, script: Script, usage: tuple[int, int] = (100, 20)):
        self.script, self.usage = script, usage
        self.log: list[tuple[tuple[str, str], int, int]] = []  # (request key, attempt, status)
        self.attempts: Counter = Counter()
        self.tokens = Counter()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requested(self) -> set[tuple[str, str]]:
        return {key for key, _, _ in self.log}

    def _answer(self, body: dict) -> tuple[Reply, Request]:
        messages = body["messages"]
        request = Request(messages[-1]["content"].splitlines()[0], SYSTEM_TO_KIND[messages[0]["content"]],
                          messages[-1]["content"], body)
        with self._lock:
            self.attempts[request.key] += 1
            attempt = self.attempts[request.key]
        reply = self.script(request, attempt)
        with self._lock:
            self.log.append((request.key, attempt, reply.status))
            if reply.status == 200 and reply.raw_body is None:
                self.tokens["prompt"] += self.usage[0]
                self.tokens["completion"] += self.usage[1]
        return reply, request

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                except (ValueError, TypeError):  # a client killed while sending
                    self.send_error(400)
                    return
                reply, _ = server._answer(body)
                time.sleep(reply.delay)
                if reply.raw_body is not None:
                    payload = reply.raw_body.encode()
                elif reply.status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {reply.status}", "type": "x"}}).encode()
                else:
                    payload = json.dumps(completion(body, reply, server.usage)).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

        return Handler


def completion(body: dict, reply: Reply, usage: tuple[int, int]) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


# ---- replies a good model would write --------------------------------------------------------
def objects(context: str) -> list[str]:
    return [m.group("name") for m in BOX.finditer(context)]


def good_text(request: Request) -> str:
    names = objects(request.context) or ["shape"]
    first = names[0]
    if request.kind == "detail":
        return (f"The image shows {len(names)} flat shapes on a plain white background. The {first} stands out "
                f"clearly, and every shape is drawn with hard edges in a single bright color.")
    if request.kind == "complex_reasoning":
        return (f"Question:\nWhat could the {first} be used for in a lesson?\n===\nAnswer:\nThe {first} is a simple "
                f"and clear shape, so a teacher could use it to explain colors, shapes and positions to children.")
    turns = [("How many objects are in the image?", f"There are {len(names)} objects."),
             (f"Is there a {first}?", f"Yes, there is a {first} in the image.")]
    return "\n===\n".join(f"Question:\n{q}\n===\nAnswer:\n{a}" for q, a in turns)


def good(request: Request, attempt: int) -> Reply:
    return Reply(text=good_text(request))


# ---- fixtures: scenes as COCO files -----------------------------------------------------------
def write_scenes(folder: Path, count: int, first_seed: int = 0) -> list:
    """Render ``count`` scenes with distinct first captions into folder/images; returns them."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    scenes, seen, seed = [], set(), first_seed
    while len(scenes) < count:
        scene = render_random_scene(seed=seed)
        seed += 1
        if scene.annotation["captions"][0] in seen:
            continue
        seen.add(scene.annotation["captions"][0])
        scene.image.save(folder / "images" / f"{len(scenes):06d}.png")
        scenes.append(scene)
    return scenes


def write_coco(folder: Path, scenes: list) -> tuple[Path, Path]:
    """COCO captions and instances files (pixel [x, y, w, h] boxes) for the rendered scenes."""
    images, captions, instances, categories = [], [], [], {}
    for index, scene in enumerate(scenes):
        side = scene.scene.side
        images.append({"id": 1000 + index, "file_name": f"{index:06d}.png", "width": side, "height": side})
        for caption in scene.annotation["captions"]:
            captions.append({"id": len(captions), "image_id": 1000 + index, "caption": caption})
        for obj in scene.scene.objects:
            category = categories.setdefault(obj.name, len(categories) + 1)
            x1, y1, x2, y2 = obj.box
            instances.append({"id": len(instances), "image_id": 1000 + index, "category_id": category,
                              "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    names = [{"id": i, "name": n, "supercategory": "shape"} for n, i in categories.items()]
    caps = folder / "captions.json"
    inst = folder / "instances.json"
    caps.write_text(json.dumps({"images": images, "annotations": captions}))
    inst.write_text(json.dumps({"images": images, "annotations": instances, "categories": names}))
    return caps, inst
