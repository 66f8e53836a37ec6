"""``llavakit chat``: multi-turn answers equal ``Llava.generate`` on the same conversation."""

from __future__ import annotations

import io
import sys

from test_serving_support import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    picture,
    tiny_checkpoint,
    tiny_model,
    workdir,
)

from llavakit.cli import main


def run_chat(monkeypatch, capsys, lines: list[str], *flags: str) -> list[str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", "--model", str(tiny_checkpoint()), "--max-tokens", "12", *flags]) == 0
    return capsys.readouterr().out.split("\n")


def generate(conversation):
    return tiny_model().generate(conversation, max_new_tokens=12).text


def test_multi_turn_chat_with_images_commands_and_clear(monkeypatch, capsys):
    first, second = workdir() / "chat-a.png", workdir() / "chat-b.png"
    picture(40, 48, 36).save(first)
    picture(41, 36, 48).save(second)
    out = run_chat(monkeypatch, capsys, [
        "What is in the picture?", "And the colours?", f"/image {workdir()}/missing.png", f"/image {second}",
        "Compare with this one.", "/clear", "Hello", "/nope", "/quit", "ignored after quit",
    ], "--image", str(first))
    turn1 = [{"role": "user", "content": [{"type": "image", "image": str(first)},
                                          {"type": "text", "text": "What is in the picture?"}]}]
    answer1 = generate(turn1)
    turn2 = [*turn1, {"role": "assistant", "content": answer1},
             {"role": "user", "content": [{"type": "text", "text": "And the colours?"}]}]
    answer2 = generate(turn2)
    turn3 = [*turn2, {"role": "assistant", "content": answer2},
             {"role": "user", "content": [{"type": "image", "image": str(second)},
                                          {"type": "text", "text": "Compare with this one."}]}]
    answer3 = generate(turn3)
    answer4 = generate([{"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
    assert out[0] == answer1 and out[1] == answer2
    assert out[2].startswith("error: image") and "not found" in out[2]
    assert out[3].startswith("(image ") and out[4] == answer3
    assert out[5] == "(conversation cleared)" and out[6] == answer4
    assert out[7].startswith("unknown command /nope")
    assert "ignored" not in "\n".join(out)


def test_a_missing_image_flag_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    assert main(["chat", "--model", str(tiny_checkpoint()), "--image", "/nonexistent.png"]) == 2
    assert "not found" in capsys.readouterr().err


def test_sampling_flags_and_stop_strings(monkeypatch, capsys):
    full = tiny_model().generate([{"role": "user", "content": "Hi"}], max_new_tokens=12).text
    stop = full[4:7]
    out = run_chat(monkeypatch, capsys, ["Hi"], "--stop", stop)
    assert out[0] == full[: full.index(stop)]
    sampled = tiny_model().generate([{"role": "user", "content": "Hi"}], max_new_tokens=12, temperature=0.9, seed=4)
    out = run_chat(monkeypatch, capsys, ["Hi"], "--temperature", "0.9", "--seed", "4")
    assert out[0] == sampled.text
