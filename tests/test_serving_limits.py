"""Limits that need their own server settings: the queue (429), shutting down (503), the request
timeout (504), client disconnects, and the media policy for http(s), file and video URLs."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from typing import ClassVar

import httpx
import pytest
from test_serving_support import (
    MODEL_NAME,
    data_url,
    encode_mp4,
    encoded,
    image_part,
    in_thread_server,
    one_torch_thread,  # noqa: F401 - autouse fixture
    picture,
    read_events,
    tiny_model,
    user,
)

from llavakit.engine import EngineConfig
from llavakit.serving.media import MediaPolicy


def post(server, messages, timeout=60, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": messages, "temperature": 0, "max_tokens": 8, **fields}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=timeout)


def wait_for(server, key, value, timeout=60.0):
    deadline = time.monotonic() + timeout
    while httpx.get(server.url + "/health", timeout=10).json()[key] != value:
        assert time.monotonic() < deadline, f"/health never showed {key} = {value}"
        time.sleep(0.01)


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def test_a_full_queue_answers_429_and_later_requests_succeed():
    with in_thread_server(engine=EngineConfig(max_rows=1, max_queued=1), max_n=1) as server:
        results = {}
        long = threading.Thread(
            target=lambda: results.setdefault("long", post(server, user("Long story"), max_tokens=400)))
        long.start()
        wait_for(server, "running", 1)
        queued = threading.Thread(target=lambda: results.setdefault("queued", post(server, user("Hi"))))
        queued.start()
        wait_for(server, "queued", 1)
        refused = post(server, user("Hi there"))
        error = assert_error(refused, 429, "queue_full")
        assert error["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
        long.join(120)
        queued.join(120)
        assert results["long"].status_code == 200 and results["queued"].status_code == 200
        assert post(server, user("Hi there")).status_code == 200


def test_a_closed_engine_answers_503():
    with in_thread_server() as server:
        server.server.config.app.state.engine.close()
        assert_error(post(server, user("Hi")), 503, "shutting_down")
        assert_error(httpx.get(server.url + "/health"), 503, "shutting_down")


def test_the_request_timeout_answers_504_and_stops_generating():
    # ignore_eos: the random tiny model may end its answer before the timeout (it did after 84
    # tokens, 0.32 s, on one machine), and then there would be nothing to time out
    with in_thread_server(request_timeout_s=0.5) as server:
        started = time.monotonic()
        assert_error(post(server, user("Tell me everything."), max_tokens=3000, ignore_eos=True), 504,
                     "request_timeout")
        assert time.monotonic() - started < 10
        wait_for(server, "running", 0, timeout=10)  # the rows were cancelled, not left running
        events = read_events(httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL_NAME, "messages": user("Again"), "max_tokens": 3000, "stream": True, "ignore_eos": True}))
        assert events[-2]["error"]["code"] == "request_timeout" and events[-1] == "[DONE]"


def test_a_client_that_disconnects_mid_stream_stops_its_generation():
    with in_thread_server() as server:
        body = {"model": MODEL_NAME, "messages": user("Go on and on"), "max_tokens": 5000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
        wait_for(server, "running", 0, timeout=15)
        assert post(server, user("Hi")).status_code == 200


class _Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/a.png")
            self.end_headers()
            return
        data = self.files.get(self.path)
        self.send_response(200 if data else 404)
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    """A loopback web server with one PNG, for the http(s) media policy."""
    _Files.files = {"/a.png": encoded(picture(11, 40, 30)), "/big.png": encoded(picture(12, 300, 300))}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def answer(server, url, kind="image_url"):
    part = {"type": kind, kind: {"url": url}}
    return post(server, user(part, "What is it?"))


def test_remote_urls_only_from_allowed_hosts(image_host):
    policy = MediaPolicy(allow_remote=True, allowed_domains=("127.0.0.1",), max_media_bytes=100_000)
    with in_thread_server(media=policy) as server:
        fetched = answer(server, image_host + "/a.png")
        assert fetched.status_code == 200, fetched.text
        inline = answer(server, data_url(_Files.files["/a.png"]))
        assert fetched.json()["choices"] == inline.json()["choices"]
        port = image_host.rsplit(":", 1)[1]
        other_host = assert_error(answer(server, f"http://localhost:{port}/a.png"), 400, "invalid_media")
        assert "allow-list" in other_host["message"]
        assert "redirects" in assert_error(answer(server, image_host + "/redirect"), 400, "invalid_media")["message"]
        assert_error(answer(server, image_host + "/missing.png"), 400, "invalid_media")
        assert "exceeds" in assert_error(answer(server, image_host + "/big.png"), 400, "invalid_media")["message"]


def test_file_urls_only_inside_allowed_folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    picture(13, 40, 30).save(allowed / "a.png")
    picture(14, 40, 30).save(outside / "secret.png")
    (allowed / "link.png").symlink_to(outside / "secret.png")
    with in_thread_server(media=MediaPolicy(local_dirs=(allowed.resolve(),))) as server:
        assert answer(server, f"file://{allowed}/a.png").status_code == 200
        for url in [f"file://{outside}/secret.png", f"file://{allowed}/link.png",
                    f"file://{allowed}/../outside/secret.png",
                    f"file://{allowed}/missing.png", "file:///etc/passwd", f"file://example.com{allowed}/a.png"]:
            error = assert_error(answer(server, url), 400, "invalid_media")
            assert "secret" not in error["message"] or "not allowed" in error["message"]


def test_video_urls_follow_the_vllm_convention():
    frames = [picture(20 + i, 32, 24) for i in range(6)]
    video = encode_mp4(frames)
    url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    with in_thread_server() as server:
        response = answer(server, url, "video_url")
        assert response.status_code == 200, response.text
        reference = decoded_video_reference(video)
        assert response.json()["choices"][0]["message"]["content"] == reference.text
        assert response.json()["usage"]["prompt_tokens"] == reference.prompt_tokens
        playlist = "data:video/mp4;base64," + base64.b64encode(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n").decode()
        assert_error(answer(server, playlist, "video_url"), 400, "invalid_media")
        assert_error(answer(server, data_url(encoded(frames[0])), "video_url"), 400, "invalid_media")


def decoded_video_reference(video: bytes, tmp=None):
    """The core's answer for the same video read from a file (PyAV decode + uniform sampling)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        file.write(video)
        file.flush()
        conversation = [{"role": "user", "content": [{"type": "video", "video": file.name},
                                                     {"type": "text", "text": "What is it?"}]}]
        return tiny_model().generate(conversation, max_new_tokens=8)


def test_many_images_in_one_request_and_jpeg_webp():
    with in_thread_server(max_images=3) as server:
        parts = [image_part(picture(30, 40, 30), "JPEG"), image_part(picture(31, 30, 40), "WEBP"), "Compare."]
        assert post(server, user(*parts)).status_code == 200


def test_ignore_eos_generates_to_the_token_limit_past_the_end_token():
    """Sampled answers of the random tiny model end with <|im_end|> now and then; with ignore_eos
    the same seeded choices run to max_tokens, through the end token, and begin with the same text."""
    with in_thread_server() as server:
        fields = {"max_tokens": 300, "temperature": 1.0, "seed": 0, "n": 8}
        stopped = post(server, user("Again"), **fields).json()
        reasons = [c["finish_reason"] for c in stopped["choices"]]
        assert "stop" in reasons, reasons  # some choice met the end token
        full = post(server, user("Again"), ignore_eos=True, **fields).json()
        assert [c["finish_reason"] for c in full["choices"]] == ["length"] * 8
        assert full["usage"]["completion_tokens"] == 8 * 300
        for short, long in zip(stopped["choices"], full["choices"]):
            assert long["message"]["content"].startswith(short["message"]["content"])


def test_serve_flags_configure_the_engine():
    import argparse

    from llavakit.serving.server_cli import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--schedule", "static", "--max-batch-size", "4", "--max-batch-tokens",
                              "512", "--max-cache-tokens", "4096", "--compile", "off", "--max-model-len", "2048"])
    settings = settings_from_args(args, 32768)
    assert settings.engine == EngineConfig(max_rows=4, max_prefill_tokens=512, max_cache_tokens=4096,
                                           schedule="static", compile=False, batch_window_s=0.005, max_queued=256)
    assert settings.max_model_len == 1024  # what one sequence's share of the cache holds
    defaults = settings_from_args(parser.parse_args(["--model", "m"]), 32768)
    assert defaults.engine.schedule == "continuous" and defaults.engine.max_cache_tokens is None
    assert defaults.max_model_len == 32768


@pytest.mark.parametrize("schedule", ["continuous", "static"])
def test_a_short_request_overtakes_a_long_answer_only_with_continuous_batching(schedule):
    with in_thread_server(engine=EngineConfig(max_rows=4, schedule=schedule)) as server:
        finished = {}

        def ask(name, max_tokens):
            response = post(server, user("Tell me a story."), max_tokens=max_tokens, ignore_eos=True, timeout=120)
            # decode steps the engine had run when this answer arrived (one per token of the long answer)
            finished[name] = (httpx.get(server.url + "/health", timeout=10).json()["steps"], response)

        long = threading.Thread(target=ask, args=("long", 400))
        long.start()
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health", timeout=10).json()["steps"] < 10:  # the long answer is decoding
            assert time.monotonic() < deadline
            time.sleep(0.005)
        ask("short", 4)
        long.join(120)
        assert finished["long"][1].json()["usage"]["completion_tokens"] == 400
        assert finished["short"][1].json()["usage"]["completion_tokens"] == 4
        if schedule == "continuous":  # answered while the long answer was still being generated
            assert finished["short"][0] < 300
        else:  # answered after the long answer's 399 decode steps, then its own
            assert finished["short"][0] >= 399 + 3
