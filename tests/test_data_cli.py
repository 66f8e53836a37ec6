"""`llavakit data inspect | stats | check` on files on disk, through the real CLI entry point."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from llavakit.cli import main
from test_data_fixtures import SQUARE_IMAGE_TOKENS, conversation, write_image, write_json


def data_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["data", *map(str, args)])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def data_file(tmp_path):
    write_image(tmp_path / "img" / "red.png", (30, 30))
    return write_json(tmp_path / "d.json", [
        {"id": "first", "image": "red.png", "conversations": conversation("<image>\nColour?", "Red.", "Sure?", "Yes.")},
        {"id": "text", "conversations": conversation("Hi", "Hello!")},
        {"id": "broken", "image": "missing.png", "conversations": conversation("<image>\nQ", "A")},
    ])


def test_inspect_marks_trained_spans_and_counts_tokens(onevision_dir, data_file):
    code, out, _ = data_cli("inspect", data_file, "--model", onevision_dir, "--image-folder",
                            data_file.parent / "img", "--template", "chatml", "--color", "never")
    assert code == 0
    assert "sample 'first'" in out and "modality image, template chatml" in out
    assert (f"<|im_start|>user\n<image x {SQUARE_IMAGE_TOKENS}>\nColour?<|im_end|>\n<|im_start|>assistant\n"
            "[[Red.<|im_end|>]]\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n[[Yes.<|im_end|>]]\n") in out
    line = next(l for l in out.splitlines() if l.startswith("tokens:"))
    text = int(line.split("text ")[1].split(",")[0])
    assert line.startswith(f"tokens: text {text}, visual {SQUARE_IMAGE_TOKENS}, total {text + SQUARE_IMAGE_TOKENS} ")


def test_inspect_by_id_and_bad_sample(onevision_dir, data_file):
    code, out, _ = data_cli("inspect", data_file, "--model", onevision_dir, "--id", "text", "--color", "never")
    assert code == 0 and "[[Hello!<|im_end|>]]" in out and "visual 0" in out
    code, _, err = data_cli("inspect", data_file, "--model", onevision_dir, "--id", "broken")
    assert code == 1 and "sample 'broken'" in err and "missing.png" in err and "missing_media" in err
    code, _, err = data_cli("inspect", data_file, "--model", onevision_dir, "--id", "nope")
    assert code == 1 and "no sample with id 'nope'" in err


def test_stats(onevision_dir, data_file):
    code, out, err = data_cli("stats", data_file, "--model", onevision_dir, "--image-folder",
                              data_file.parent / "img", "--json")
    assert code == 0
    total = json.loads(out)["total"]
    assert total["modalities"] == {"image": 1, "text": 1} and total["skipped"] == 1
    assert total["visual_tokens"] == SQUARE_IMAGE_TOKENS
    assert "skipped 'broken'" in err


def test_check_reports_every_bad_sample(onevision_dir, data_file, tmp_path):
    report = tmp_path / "skipped.jsonl"
    code, out, _ = data_cli("check", data_file, "--model", onevision_dir, "--image-folder",
                            data_file.parent / "img", "--report", report)
    assert code == 1
    assert "broken" in out and "missing_media" in out and "checked 3 samples; skipped 1 samples" in out
    assert [json.loads(l)["sample_id"] for l in report.read_text().splitlines()] == ["broken"]
