"""``llavakit datagen instruct`` end to end over real HTTP on loopback: a scripted OpenAI-compatible
server (every fault path), kill-and-rerun in a child process, and ``llavakit serve`` with a tiny model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_datagen_support import (
    Reply,
    ScriptedServer,
    good,
    good_text,
    write_coco,
    write_scenes,
)

from llavakit.cli import main

FAST = ["--backoff", "0.01", "--max-backoff", "0.05", "--quiet"]


def instruct(server_url: str, annotations, out: Path, *extra: str) -> int:
    return main(["datagen", "instruct", "--annotations", *map(str, annotations), "--out", str(out),
                 "--base-url", server_url, "--model", "scripted", *FAST, *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    scenes = write_scenes(folder, 10)
    return folder, scenes, write_coco(folder, scenes)


def caption_of(scenes, index: int) -> str:
    return scenes[index].annotation["captions"][0]


def test_coco_annotations_become_llava_data_the_pipeline_loads(world, onevision_dir, tmp_path, capsys):
    folder, _, coco = world
    with ScriptedServer(good) as server:
        assert instruct(server.base_url, coco, tmp_path / "out.jsonl", "--limit", "4") == 0
    records = lines(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == [f"{1000 + i}_{t}" for i in range(4)
                                          for t in ("conversation", "detail", "complex_reasoning")]
    assert (tmp_path / "out.rejects.jsonl").read_text() == ""
    first = server.log[0]
    assert {key[1] for key, _, _ in server.log} == {"conversation", "detail", "complex_reasoning"} and first[2] == 200
    out = capsys.readouterr().out
    assert "12 items: 12 written, 0 rejected, 0 unfinished" in out and "1200 prompt + 240 completion" in out
    # the data pipeline reads every sample: placeholders, images, turns, template, lengths
    assert main(["data", "check", str(tmp_path / "out.jsonl"), "--model", str(onevision_dir),
                 "--image-folder", str(folder / "images")]) == 0
    assert "checked 12 samples" in capsys.readouterr().out
    assert main(["datagen", "stats", str(tmp_path / "out.jsonl"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: v["records"] for k, v in stats["types"].items()} == {
        "complex_reasoning": 4, "conversation": 4, "detail": 4}
    assert stats["types"]["conversation"]["turns_histogram"] == {"2": 4}


MODES = {0: "good", 1: "429", 2: "500x2", 3: "slow", 4: "badbody", 5: "malformed", 6: "dupes", 7: "down",
         8: "refused", 9: "placeholder"}


class FaultyScript:
    """One behaviour per image (see MODES); ``healed`` brings the image that is down back up."""

    def __init__(self, scenes):
        self.modes = {caption_of(scenes, i): mode for i, mode in MODES.items()}
        self.healed = False

    def __call__(self, request, attempt: int) -> Reply:
        mode = self.modes[request.image]
        if mode == "429" and attempt == 1:
            return Reply(status=429, headers={"Retry-After": "0"})
        if mode == "500x2" and attempt <= 2:
            return Reply(status=500)
        if mode == "slow" and attempt == 1:
            return Reply(text=good_text(request), delay=2.5)  # beyond the client's 1 s timeout
        if mode == "badbody" and attempt == 1:
            return Reply(raw_body="<html>upstream hiccup</html>")
        if mode == "down" and not self.healed:
            return Reply(status=503)
        if mode == "refused":
            return Reply(status=400)
        if mode == "malformed":
            return {"conversation": Reply(text="I'm sorry, I can't help with that."),
                    "detail": Reply(text=""),
                    "complex_reasoning": Reply(text=good_text(request), finish_reason="length")}[request.kind]
        if mode == "dupes" and request.kind != "detail":
            question = "Question:\nHow many objects are in the image?\n===\nAnswer:\nThere are several."
            return Reply(text=question + "\n===\n" + question if request.kind == "conversation" else
                         question + " " + "They are easy to count because none of them overlap at all here.")
        if mode == "placeholder" and request.kind == "conversation":
            return Reply(text="Question:\nWhat is in <image>?\n===\nAnswer:\nShapes.")
        return good(request, attempt)


def test_errors_slow_replies_and_malformed_text_are_handled_as_specified(world, tmp_path, capsys):
    _, scenes, coco = world
    script = FaultyScript(scenes)
    out = tmp_path / "out.jsonl"
    with ScriptedServer(script) as server:
        code = instruct(server.base_url, coco, out, "--timeout", "1", "--max-attempts", "3", "--concurrency", "4")
        assert code == 1  # the image that is down stays unfinished
        assert "3 items unfinished (some requests failed)" in capsys.readouterr().err
        attempts = {(MODES[i], kind): server.attempts[(caption_of(scenes, i), kind)]
                    for i in MODES for kind in ("conversation", "detail", "complex_reasoning")}
        assert {k[0]: v for k, v in attempts.items() if k[0] in ("429", "500x2", "slow", "badbody", "down")} == {
            "429": 2, "500x2": 3, "slow": 2, "badbody": 2, "down": 3}
        assert attempts[("refused", "detail")] == 1  # a 400 is the item's answer: not retried

        records, rejects = lines(out), lines(tmp_path / "out.rejects.jsonl")
        by_image = {}
        for r in records:
            by_image.setdefault(int(r["id"].split("_")[0]) - 1000, []).append(r["id"].split("_", 1)[1])
        assert by_image == {**{i: ["conversation", "detail", "complex_reasoning"] for i in range(5)},
                            6: ["conversation", "detail"], 9: ["detail", "complex_reasoning"]}
        dupes = next(r for r in records if r["id"] == "1006_conversation")["conversations"]
        assert len(dupes) == 2  # the repeated question was dropped
        reasons = {r["id"]: r["reason"] for r in rejects}
        assert reasons.keys() == {"1005_conversation", "1005_detail", "1005_complex_reasoning",
                                  "1006_complex_reasoning", "1008_conversation", "1008_detail",
                                  "1008_complex_reasoning", "1009_conversation"}
        assert "text outside" in reasons["1005_conversation"] and "empty reply" in reasons["1005_detail"]
        assert "truncated" in reasons["1005_complex_reasoning"]
        assert "already asked" in reasons["1006_complex_reasoning"]
        assert "HTTP 400" in reasons["1008_detail"] and "placeholder <image>" in reasons["1009_conversation"]
        assert all(not any("<image>" in t["value"] for t in r["conversations"][1:]) for r in records)

        script.healed = True  # the endpoint comes back: a rerun sends exactly the unfinished items
        seen = len(server.log)
        assert instruct(server.base_url, coco, out, "--timeout", "1") == 0
        assert {key for key, _, _ in server.log[seen:]} == {(caption_of(scenes, 7), k) for k in
                                                            ("conversation", "detail", "complex_reasoning")}
    records = lines(out)
    assert [r["id"] for r in records if r["id"].startswith(("1006", "1007", "1008"))] == [
        "1006_conversation", "1006_detail", "1007_conversation", "1007_detail", "1007_complex_reasoning"]
    assert len(lines(tmp_path / "out.rejects.jsonl")) == 8


def test_budget_stops_sending_and_a_rerun_finishes(world, tmp_path, capsys):
    _, _, coco = world
    with ScriptedServer(good) as server:
        assert instruct(server.base_url, coco, tmp_path / "a.jsonl", "--limit", "3", "--max-requests", "4",
                        "--concurrency", "2") == 1
        assert len(server.log) == 4 and len(lines(tmp_path / "a.jsonl")) == 4
        assert "the budget is spent" in capsys.readouterr().err
        assert instruct(server.base_url, coco, tmp_path / "a.jsonl", "--limit", "3") == 0
        assert len(server.log) == 9  # each item requested once over both runs
        assert instruct(server.base_url, coco, tmp_path / "b.jsonl", "--limit", "3") == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_wrong_key_stops_the_run_at_once(world, tmp_path, capsys):
    _, _, coco = world
    with ScriptedServer(lambda request, attempt: Reply(status=401)) as server:
        assert instruct(server.base_url, coco, tmp_path / "out.jsonl") == 2
        assert len(server.log) <= 8  # the workers in flight, not every item
    assert "HTTP 401" in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_text() == ""


class SlowMixedScript:
    """Deterministic replies (a function of the request), some malformed, with delays that make
    requests finish out of order."""

    def __call__(self, request, attempt: int) -> Reply:
        digest = sum(map(ord, request.image + request.kind))
        text = good_text(request) if digest % 7 else "no idea"
        return Reply(text=text, delay=0.03 + 0.04 * (digest % 5))


def test_killed_job_reruns_to_the_same_dataset_without_duplicates(world, tmp_path):
    _, scenes, coco = world
    ids = {caption_of(scenes, i): str(1000 + i) for i in range(len(scenes))}
    with ScriptedServer(SlowMixedScript()) as server:  # the reference: one uninterrupted run
        assert instruct(server.base_url, coco, tmp_path / "ref.jsonl", "--concurrency", "4") == 0
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.journal.jsonl"
    with ScriptedServer(SlowMixedScript()) as server:
        command = [sys.executable, "-m", "llavakit", "datagen", "instruct", "--annotations", *map(str, coco),
                   "--out", str(out), "--base-url", server.base_url, "--model", "scripted", "--concurrency", "4",
                   *FAST]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (not journal.exists() or journal.read_text().count("\n") < 10) and time.monotonic() < deadline:
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        first_run = len(server.log)
        journaled = {json.loads(line)["item"] for line in journal.read_text().splitlines()}
        assert 10 <= len(journaled) < 30 and not out.exists()  # killed mid-run, before the dataset was written
        assert main(["datagen", "instruct", "--annotations", *map(str, coco), "--out", str(out),
                     "--base-url", server.base_url, "--model", "scripted", "--concurrency", "4", *FAST]) == 0
        again = {f"{ids[image]}/{kind}" for (image, kind), _, _ in server.log[first_run:]}
    assert not (again & journaled)  # nothing finished before the kill was requested again
    assert len(again | journaled) == 30
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert (tmp_path / "out.rejects.jsonl").read_bytes() == (tmp_path / "ref.rejects.jsonl").read_bytes()
    records = lines(out)
    assert len({r["id"] for r in records}) == len(records) and lines(tmp_path / "out.rejects.jsonl")


def test_ctrl_c_writes_what_is_finished_and_a_rerun_completes(world, tmp_path):
    _, _, coco = world
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.journal.jsonl"
    with ScriptedServer(SlowMixedScript()) as server:
        command = [sys.executable, "-m", "llavakit", "datagen", "instruct", "--annotations", *map(str, coco),
                   "--out", str(out), "--base-url", server.base_url, "--model", "scripted", "--concurrency", "2",
                   *FAST]
        # A child inherits an ignored SIGINT, and Python then installs no KeyboardInterrupt handler:
        # in the full suite this child once ran to the end (exit 0) through the SIGINT below.
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while not journal.exists() or journal.read_text().count("\n") < 5:
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.005)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 130
        assert "rerun the same command" in child.stderr.read().decode()
        partial = lines(out) + lines(tmp_path / "out.rejects.jsonl")
        assert 5 <= len(partial) < 30  # what had finished, in item order
        kinds = ["conversation", "detail", "complex_reasoning"]
        order = [(r["id"].split("_", 1)[0], kinds.index(r["id"].split("_", 1)[1])) for r in lines(out)]
        assert order == sorted(order)
        assert instruct(server.base_url, coco, out) == 0
        assert instruct(server.base_url, coco, tmp_path / "ref.jsonl") == 0
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


# ---- against the project's own server -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_llavakit_serve_is_a_usable_endpoint(world, onevision_dir, tmp_path):
    _, _, coco = world
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen([sys.executable, "-m", "llavakit", "serve", "--model", str(onevision_dir), "--port",
                               str(port), "--served-model-name", "tiny", "--threads", "1", "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llavakit serve did not start"
            time.sleep(0.2)
        out = tmp_path / "out.jsonl"
        code = main(["datagen", "instruct", "--annotations", *map(str, coco), "--out", str(out), "--limit", "2",
                     "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "tiny", "--max-tokens", "12",
                     "--temperature", "0", "--concurrency", "2", "--quiet"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    assert code == 0  # every item finished: a tiny random model's text is kept or rejected, never lost
    journal = lines(tmp_path / "out.journal.jsonl")
    assert len(journal) == 6 and all(e["outcome"] == "reply" and e["prompt_tokens"] > 500 for e in journal)
    assert all(e["completion_tokens"] <= 12 for e in journal)
    rejects = lines(tmp_path / "out.rejects.jsonl")
    assert len(lines(out)) + len(rejects) == 6
    assert all(r["reason"].startswith(("truncated", "text outside", "the description has")) for r in rejects)
