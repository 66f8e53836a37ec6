"""LLM-as-judge through a real HTTP server on loopback: a stub OpenAI endpoint (canned, malformed and
garbled replies, 429/500/503, a bad key) for prompts, parsing, retries and failure counts; and
`llavakit serve`'s own app with the tiny model, for protocol compatibility."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_eval_support import one_torch_thread, png, predictions, write_jsonl  # noqa: F401 - autouse fixture

import llavakit
from llavakit.evaluation.judge_client import JudgeClient, JudgeConfigError, JudgeSettings
from llavakit.evaluation.judging import judge_records, load_judge_prompt
from llavakit.evaluation.runner import evaluate
from llavakit.evaluation.task_spec import JudgeSpec, TaskSpecError, load_task, task_from_dict

QUESTIONS = ["q-good-a", "q-good-b", "q-malformed", "q-flaky", "q-garbled", "q-down"]


class Judge:
    """Replies by the question named in the prompt; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.seen: dict[str, int] = {}
        self.down = True
        self.lock = threading.Lock()

    def reply(self, body: dict, headers) -> tuple[int, dict, bytes]:
        text = body["messages"][-1]["content"]
        question = next(q for q in QUESTIONS if f"[Question]\n{q}\n" in text)
        with self.lock:
            self.requests.append({"body": body, "auth": headers.get("Authorization"), "question": question})
            count = self.seen[question] = self.seen.get(question, 0) + 1
        canned = {"q-good-a": "8 6\nAssistant 2 misses a detail.", "q-good-b": "6 9\nAssistant 2 is better.",
                  "q-malformed": "I would rather not give numbers."}
        if question in canned:
            return 200, {}, completion(canned[question])
        if question == "q-flaky":
            if count == 1:
                return 429, {"Retry-After": "0"}, error_body("slow down")
            if count == 2:
                return 500, {}, error_body("boom")
            return 200, {}, completion("7 7\nBoth fine.")
        if question == "q-garbled":
            return (200, {}, b"<html>proxy error</html>") if count == 1 else (200, {}, completion("5, 5\nok"))
        if self.down:
            return 503, {}, error_body("overloaded")
        return 200, {}, completion("4 2\nback up")


def completion(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "model": "judge-x",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]}).encode()


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error"}}).encode()


@pytest.fixture
def judge_server():
    judge = Judge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/chat/completions":
                return self._send(404, {}, error_body("no route"))
            if self.headers.get("Authorization") == "Bearer wrong":
                return self._send(401, {}, error_body("bad key"))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["messages"][-1]["content"] == "bad request":
                return self._send(400, {}, error_body("invalid"))
            self._send(*judge.reply(body, self.headers))

        def _send(self, status, headers, payload):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    judge.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield judge
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def model(onevision_dir):
    return llavakit.load(onevision_dir)


def bench_task(tmp_path):
    """A LLaVA-Bench-shaped task on local files: captions, reference answers, categories."""
    png(tmp_path / "bench" / "images" / "a.png")
    records = [{"question_id": i, "question": q, "gpt_answer": f"reference {i}", "caption": [f"caption {i}", "more"],
                "category": "conv" if i % 2 else "detail", "image": "a.png"} for i, q in enumerate(QUESTIONS)]
    write_jsonl(tmp_path / "bench" / "bench.jsonl", records)
    spec = load_task("llava_bench").model_dump()
    spec["data"] = {**spec["data"], "data_dir": "bench", "file": "bench.jsonl", "hf": None}
    spec["generation"]["max_new_tokens"] = 4
    return task_from_dict(spec, str(tmp_path / "llava_bench.yaml"))


def test_judged_task_end_to_end(tmp_path, model, judge_server):
    spec = bench_task(tmp_path)
    settings = JudgeSettings(url=judge_server.url, model="judge-x", api_key="k", max_retries=3, backoff=0.01,
                             workers=2)
    out = tmp_path / "run"
    row = evaluate(model, [spec], out, data_root=tmp_path, progress=False, judge=settings)["llava_bench"]

    # Prompts: llavakit's judge prompt with the context, question, reference and the model's answer.
    prompt = load_judge_prompt("llava_bench")
    answers = {p["question"]: p["prediction"] for p in predictions(out, "llava_bench")}
    first = {}
    for request in judge_server.requests:
        first.setdefault(request["question"], request)
    assert sorted(first) == sorted(QUESTIONS)
    for question, request in first.items():
        body = request["body"]
        assert request["auth"] == "Bearer k"
        assert body["model"] == "judge-x" and body["temperature"] == prompt.temperature == 0.2
        assert body["max_tokens"] == prompt.max_tokens
        i = QUESTIONS.index(question)
        assert body["messages"] == prompt.messages(f"caption {i}\nmore", question, f"reference {i}", answers[question])
        assert body["messages"][0]["role"] == "system"

    # Scores: 4 judged (good-a 8/6, good-b 6/9, flaky 7/7 after 429 + 500, garbled 5/5 after a retry),
    # malformed and down failed and left out.
    assert row["metric"] == "llava_bench" and row["score_name"] == "relative"
    assert row["scores"]["reference"] == pytest.approx(6.5) and row["scores"]["model"] == pytest.approx(6.75)
    assert row["score"] == pytest.approx(100 * 6.75 / 6.5)
    assert row["details"]["failed"] == 2 and row["details"]["judged"] == 4
    assert row["details"]["judge"] == {"model": "judge-x", "requests": 6, "attempts": 1 + 1 + 1 + 3 + 2 + 4,
                                       "failed_requests": 1}
    assert judge_server.seen["q-down"] == 4  # 1 + max_retries
    lines = {p["question"]: p for p in predictions(out, "llava_bench")}
    assert "503" in lines["q-down"]["judge_error"] and lines["q-down"]["review"] == ""
    assert lines["q-malformed"]["review"] == "I would rather not give numbers."
    assert lines["q-malformed"]["score"] is None
    assert lines["q-good-b"]["score"] == 9.0

    # A rerun asks again only for the failed request; the endpoint is back, so it now counts.
    judge_server.down = False
    asked = len(judge_server.requests)
    row = evaluate(model, [spec], out, data_root=tmp_path, progress=False, judge=settings)["llava_bench"]
    assert [r["question"] for r in judge_server.requests[asked:]] == ["q-down"]
    assert row["details"]["failed"] == 1 and row["details"]["judge"]["failed_requests"] == 0
    assert row["scores"]["reference"] == pytest.approx((8 + 6 + 7 + 5 + 4) / 5)
    assert "judge_error" not in predictions(out, "llava_bench")[5]


def test_refusals_and_settings(judge_server, monkeypatch):
    client = JudgeClient(JudgeSettings(url=judge_server.url, model="m", backoff=0.0))
    reply = client.chat([{"role": "user", "content": "bad request"}])
    assert not reply.ok and reply.attempts == 1 and reply.error.startswith("HTTP 400")
    wrong = JudgeClient(JudgeSettings(url=judge_server.url, model="m", api_key="wrong"))
    with pytest.raises(JudgeConfigError, match="refused the request \\(HTTP 401"):
        wrong.chat([{"role": "user", "content": "x"}])
    closed = JudgeClient(JudgeSettings(url="http://127.0.0.1:9", model="m", max_retries=1, backoff=0.0, timeout=2))
    reply = closed.chat([{"role": "user", "content": "x"}])
    assert not reply.ok and reply.attempts == 2 and "gave up after 2 attempts" in reply.error

    for env in ("LLAVAKIT_JUDGE_URL", "LLAVAKIT_JUDGE_MODEL", "LLAVAKIT_JUDGE_API_KEY", "OPENAI_BASE_URL",
                "OPENAI_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(JudgeConfigError, match="needs --judge-url / LLAVAKIT_JUDGE_URL and --judge-model"):
        JudgeSettings.resolve()
    monkeypatch.setenv("LLAVAKIT_JUDGE_URL", "http://h:1")
    monkeypatch.setenv("LLAVAKIT_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    settings = JudgeSettings.resolve(model="flag-model")
    assert (settings.model, settings.api_key, settings.endpoint) == ("flag-model", "sk-env",
                                                                     "http://h:1/v1/chat/completions")
    assert JudgeSettings(url="http://h/v1/", model="m").endpoint == "http://h/v1/chat/completions"
    assert JudgeSettings(url="http://h/api/chat/completions", model="m").endpoint == "http://h/api/chat/completions"


def test_judged_task_without_a_judge_stops_before_generating(tmp_path, monkeypatch):
    for env in ("LLAVAKIT_JUDGE_URL", "LLAVAKIT_JUDGE_MODEL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(JudgeConfigError, match="task llava_bench is scored by an LLM judge"):
        evaluate(tmp_path / "never-loaded", [bench_task(tmp_path)], tmp_path / "run", data_root=tmp_path)
    assert not (tmp_path / "run" / "predictions").exists()


def test_judge_prompt_files(tmp_path):
    prompt = load_judge_prompt("llava_bench")
    [system, user] = prompt.messages("CTX", "QUESTION", "REF", "ANSWER")
    assert system["role"] == "system"
    text = user["content"]
    assert text.index("CTX") < text.index("QUESTION") < text.index("REF") < text.index("ANSWER")
    assert "[Assistant 1]\nREF\n\n[End of Assistant 1]" in text and "first line" in text
    (tmp_path / "p.yaml").write_text("template: '{question} {answer}'\n")
    with pytest.raises(TaskSpecError, match="never uses {context}"):
        load_judge_prompt(tmp_path / "p.yaml")
    with pytest.raises(TaskSpecError, match="not a file and not a packaged prompt"):
        load_judge_prompt("nope")


def test_llavakit_serve_as_the_judge(tmp_path, model):
    """The judge is `llavakit serve`'s app with the tiny random model: requests go through, replies come
    back, and since a random model writes no scores, every judgement fails and none is averaged in."""
    from llavakit.evaluation.metrics import score
    from llavakit.serving.app import create_app
    from llavakit.serving.background import BackgroundServer
    from llavakit.serving.settings import ServerSettings

    (tmp_path / "short.yaml").write_text(load_judge_prompt("llava_bench").model_dump_json().replace(
        '"max_tokens":1024', '"max_tokens":6'))
    spec = JudgeSpec(prompt=str(tmp_path / "short.yaml"))
    records = [{"id": i, "question": f"q{i}", "answer": "ref", "caption": "c", "prediction": "p"} for i in range(3)]
    app = create_app(model, ServerSettings(model_name="tiny-judge", max_model_len=8192, api_key="key"))
    with BackgroundServer(app) as server:
        client = JudgeClient(JudgeSettings(url=server.url + "/v1", model="tiny-judge", api_key="key", workers=2))
        reviews, stats = judge_records(records, spec, client, tmp_path / "reviews.jsonl")
    assert stats.requested == 3 and stats.failed == 0 and stats.attempts == 3
    assert all(isinstance(reviews[str(i)]["review"], str) for i in range(3))
    result = score("llava_bench", [{**r, "review": reviews[str(r["id"])]["review"]} for r in records])
    assert result.details["judged"] + result.details["failed"] == 3
    if result.details["judged"] == 0:
        assert result.scores["relative"] is None
