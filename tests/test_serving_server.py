"""``llavakit serve`` in a real process on loopback: parity with transformers, streaming, the openai
client, every refusal, and graceful shutdown."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from PIL import Image
from test_serving_support import (
    MODEL_NAME,
    data_url,
    encoded,
    hf_reference,
    image_part,
    one_torch_thread,  # noqa: F401 - autouse fixture
    picture,
    png_claiming,
    read_events,
    server_process,
    streamed_texts,
    tiny_checkpoint,
    user,
)

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
FLAGS = ("--api-key", KEY, "--max-images", "3", "--max-image-pixels", "40000", "--max-body-bytes", "300000",
         "--max-model-len", "400", "--max-n", "4", "--default-max-tokens", "16")


@pytest.fixture(scope="module")
def server():
    process = server_process(*FLAGS)
    yield process
    process.stop()


def chat(server, messages, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": messages, "temperature": 0, **fields}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)


A, B = picture(1, 64, 48), picture(2, 30, 90)
CASES = {
    "single image": ([A], user(image_part(A), "What is shown?")),
    "two images": ([A, B], user(image_part(A), image_part(B), "Compare them.")),
    "text only": ([], user("Hello! How are you?")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_answers_equal_transformers_generate(server, case):
    images, messages = CASES[case]
    hf_messages = [{"role": "user", "content": [
        {"type": "image"} if part["type"] == "image_url" else part for part in messages[0]["content"]]}]
    prompt_tokens, hf_ids, hf_text = hf_reference(tiny_checkpoint(), hf_messages, images, max_new_tokens=24)
    response = chat(server, messages, max_tokens=24)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == hf_text
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == len(hf_ids)
    assert body["usage"]["total_tokens"] == prompt_tokens + len(hf_ids)


def test_stream_chunks_concatenate_to_the_non_streamed_text(server):
    messages = user(image_part(A), "Describe it.")
    fields = {"max_tokens": 30, "n": 3, "temperature": 0.9, "top_p": 0.95, "seed": 5}
    plain = chat(server, messages, **fields).json()
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=AUTH, timeout=120,
                      json={"model": MODEL_NAME, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}, **fields}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [{"role": "assistant", "content": ""}] * 3
    texts = [choice["message"]["content"] for choice in plain["choices"]]
    assert streamed_texts(chunks, 3) == texts
    assert len(set(texts)) > 1  # each choice samples with its own seed
    finishes = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]}
    assert finishes == {i: plain["choices"][i]["finish_reason"] for i in range(3)}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_the_openai_client_works_streaming_included(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    messages = user(image_part(A), "What is shown?")
    completion = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, temperature=0)
    text = completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 16 and completion.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, temperature=0,
                                            stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == text and len(pieces) > 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=399)


def image_url(url: str) -> list[dict]:
    return user({"type": "image_url", "image_url": {"url": url}}, "What is it?")


GIF = encoded(picture(3, 20, 20), "GIF")
REFUSALS = {
    # name: (request keyword arguments for httpx, status, code, param)
    "no API key": ({"headers": {}}, 401, "invalid_api_key", None),
    "wrong API key": ({"headers": {"Authorization": "Bearer nope"}}, 401, "invalid_api_key", None),
    "unknown model": ({"body": {"model": "gpt-9"}}, 404, "model_not_found", "model"),
    "not JSON": ({"content": b"{not json", "headers": {**AUTH, "Content-Type": "application/json"}}, 400,
                 "invalid_json", None),
    "no messages": ({"body": {"messages": []}}, 400, "invalid_value", "messages"),
    "temperature too high": ({"body": {"temperature": 3}}, 400, "invalid_value", "temperature"),
    "n too large": ({"body": {"n": 5}}, 400, None, "n"),
    "unsupported logprobs": ({"body": {"logprobs": True}}, 400, "invalid_value", "logprobs"),
    "unknown content part": ({"body": {"messages": user({"type": "audio", "audio": "x"})}}, 400, "invalid_value",
                             "messages.0.content.0"),
    "image part without url": ({"body": {"messages": user({"type": "image_url", "image_url": {}})}}, 400,
                               "invalid_value", "messages.0.content.0.image_url.url"),
    "bad base64": ({"body": {"messages": image_url("data:image/png;base64,@@@")}}, 400, "invalid_media",
                   "messages.0.content.0.image_url.url"),
    "not an image": ({"body": {"messages": image_url(data_url(b"hello world"))}}, 400, "invalid_media", None),
    "GIF": ({"body": {"messages": image_url(data_url(GIF, "GIF"))}}, 400, "invalid_media", None),
    "GIF bytes labelled PNG": ({"body": {"messages": image_url(data_url(GIF))}}, 400, "invalid_media", None),
    "truncated PNG": ({"body": {"messages": image_url(data_url(encoded(picture(4, 60, 60))[:300]))}}, 400,
                      "invalid_media", None),
    "too many pixels": ({"body": {"messages": image_url(data_url(Image.new("RGB", (300, 300), "red")))}}, 400,
                        "invalid_media", None),
    "decompression bomb": ({"body": {"messages": image_url(data_url(png_claiming(100_000, 100_000)))}}, 400,
                           "invalid_media", None),
    "bomb under PIL's own limit": ({"body": {"messages": image_url(data_url(png_claiming(5000, 5000)))}}, 400,
                                   "invalid_media", None),
    "too many images": ({"body": {"messages": user(*[image_part(picture(i, 8, 8)) for i in range(4)])}}, 400,
                        "too_many_images", "messages"),
    "http URL not enabled": ({"body": {"messages": image_url("http://127.0.0.1:9/x.png")}}, 400, "invalid_media",
                             None),
    "file URL not enabled": ({"body": {"messages": image_url("file:///etc/passwd")}}, 400, "invalid_media", None),
    "other scheme": ({"body": {"messages": image_url("ftp://127.0.0.1/x.png")}}, 400, "invalid_media", None),
    "body too large": ({"body": {"messages": user("x" * 400_000)}}, 413, "request_too_large", None),
    "context too long": ({"body": {"max_tokens": 300, "messages": user(image_part(A), "x " * 100)}}, 400,
                         "context_length_exceeded", "messages"),
    "prompt alone too long": ({"body": {"messages": user("word " * 500)}}, 400, "context_length_exceeded",
                              "messages"),
    "placeholder typed in text": ({"body": {"messages": user("look <image> here")}}, 400, "reserved_token",
                                  "messages.0.content.0.text"),
    "GET on a POST route": ({"method": "GET"}, 405, "method_not_allowed", None),
    "unknown route": ({"path": "/v1/completions-nope"}, 404, "not_found", None),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_refusal_is_an_openai_error_with_its_status(server, name):
    options, status, code, param = REFUSALS[name]
    body = {"model": MODEL_NAME, "messages": user("Hi"), "max_tokens": 4, **options.get("body", {})}
    request = {"content": options["content"]} if "content" in options else {"json": body}
    response = httpx.request(options.get("method", "POST"), server.url + options.get("path", "/v1/chat/completions"),
                             headers=options.get("headers", AUTH), timeout=60, **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             405: "invalid_request_error", 413: "invalid_request_error"}[status]
    if code:
        assert error["code"] == code
    if param:
        assert error["param"] == param
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # still serving


def test_health_and_models(server):
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == MODEL_NAME
    models = httpx.get(server.url + "/v1/models", headers=AUTH, timeout=10).json()
    assert models["data"][0]["id"] == MODEL_NAME and models["data"][0]["max_model_len"] == 400
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "llavakit chat" in page.text


def test_sigterm_finishes_in_flight_requests_then_exits(server):
    """Last test of the module: it stops the server."""
    results = {}

    def long_request():
        results["response"] = chat(server, user("Tell me a long story."), max_tokens=300)

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 60
    while httpx.get(server.url + "/health", timeout=10).json()["running"] == 0:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)
    server.terminate()
    worker.join(120)
    response = results["response"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 300
    assert server.process.wait(60) in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)
    assert "Traceback" not in server.output()
