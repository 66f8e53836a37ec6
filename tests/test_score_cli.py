"""`llavakit score` on predictions written to tmp_path: the main paths as a subprocess, the rest of
the error handling in-process (each subprocess pays for importing the whole package)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavakit.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def run_score(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "llavakit", "score", *args], capture_output=True, text=True, env=env, timeout=120
    )


def score_in_process(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["score", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


VQA = [
    {"id": "q1", "prediction": "Two", "answers": ["2"] * 10},
    {"id": "q2", "prediction": "yes", "answers": ["yes"] + ["no"] * 9},
    {"id": "q3", "prediction": "red", "answers": ["blue"] * 10},
]


def test_scores_and_writes_json(tmp_path):
    preds = write_jsonl(tmp_path / "preds.jsonl", VQA)
    out = tmp_path / "sub" / "results.json"
    proc = run_score("--metric", "vqav2", "--predictions", str(preds), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "vqav2 (n=3)" in proc.stdout
    assert "accuracy" in proc.stdout and "0.4333" in proc.stdout  # (1 + 0.3 + 0) / 3
    payload = json.loads(out.read_text())
    result = payload["results"]["vqav2"]
    assert result["n"] == 3
    assert result["scores"]["accuracy"] == pytest.approx(1.3 / 3)
    assert [s["id"] for s in result["per_sample"]] == ["q1", "q2", "q3"]
    assert [s["score"] for s in result["per_sample"]] == pytest.approx([1.0, 0.3, 0.0])


def test_several_metrics_and_categories(tmp_path, capsys):
    records = [
        {"id": 1, "prediction": "(A)", "answer": "A", "category": "art"},
        {"id": 2, "prediction": "The answer is C.", "answer": 1, "category": "math"},
    ]
    preds = write_jsonl(tmp_path / "mc.jsonl", records)
    out = tmp_path / "r.json"
    code, stdout, stderr = score_in_process(
        capsys, "--metric", "multiple_choice", "--metric", "scienceqa_img", "--predictions", str(preds),
        "--out", str(out), "--no-per-sample",
    )  # fmt: skip
    assert code == 0, stderr
    assert "multiple_choice (n=2)" in stdout and "scienceqa_img (n=2)" in stdout
    assert "category" in stdout and "math" in stdout
    results = json.loads(out.read_text())["results"]
    assert results["multiple_choice"]["scores"]["accuracy"] == 0.5
    assert results["scienceqa_img"]["details"]["unparsed"] == 2  # lmms-eval reads neither "(A)" nor a sentence
    assert "per_sample" not in results["scienceqa_img"]


def test_invalid_json_names_the_line(tmp_path):
    preds = write_jsonl(tmp_path / "bad.jsonl", [VQA[0], "", '{"id": "q3", "prediction": "x",'])
    proc = run_score("--metric", "vqav2", "--predictions", str(preds))
    assert proc.returncode == 2
    assert f"{preds}:3: invalid JSON" in proc.stderr


def test_missing_field_names_line_and_field(tmp_path):
    preds = write_jsonl(tmp_path / "bad.jsonl", [VQA[0], "", {"id": "q2", "prediction": "x"}])
    proc = run_score("--metric", "vqav2", "--predictions", str(preds))
    assert proc.returncode == 2
    assert f"{preds}:3: vqav2: field 'answer': missing" in proc.stderr


def test_wrong_type_and_non_object_lines(tmp_path, capsys):
    preds = write_jsonl(tmp_path / "bad.jsonl", [{"prediction": 3, "answer": "3"}])
    code, _, stderr = score_in_process(capsys, "--metric", "accuracy", "--predictions", str(preds))
    assert code == 2 and ":1: accuracy: field 'prediction': must be a string" in stderr
    preds = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    code, _, stderr = score_in_process(capsys, "--metric", "accuracy", "--predictions", str(preds))
    assert code == 2 and ":1: expected a JSON object" in stderr


def test_usage_errors(tmp_path, capsys):
    assert score_in_process(capsys, "--metric", "bleu", "--predictions", str(tmp_path / "x.jsonl"))[0] == 2
    assert score_in_process(capsys, "--metric", "vqav2")[0] == 2
    code, _, stderr = score_in_process(capsys, "--metric", "vqav2", "--predictions", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl" in stderr
    empty = write_jsonl(tmp_path / "e.jsonl", [""])
    code, _, stderr = score_in_process(capsys, "--metric", "vqav2", "--predictions", str(empty))
    assert code == 2 and "no records" in stderr


def test_mme_aggregation_errors_are_reported(tmp_path, capsys):
    record = {"prediction": "Yes", "answer": "yes", "category": "OCR", "image_id": 1}
    preds = write_jsonl(tmp_path / "mme.jsonl", [record])
    code, _, stderr = score_in_process(capsys, "--metric", "mme", "--predictions", str(preds))
    assert code == 2 and "MME pairs 2" in stderr


def test_list(capsys):
    code, stdout, _ = score_in_process(capsys, "--list")
    assert code == 0
    for name in ("vqav2", "anls", "pope", "mme", "llava_bench", "relaxed_accuracy"):
        assert name in stdout
