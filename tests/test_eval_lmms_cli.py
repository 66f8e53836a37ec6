"""`lmms-eval --model llavakit` as a user runs it after `make install` (or `pip install -e '.[eval]'` and
`pip install --no-deps lmms-eval==0.7.3`): the installed command, in this environment, on a local lmms-eval
task over the synthetic world's colour split and a tiny model. Its replies and its score equal
`llavakit eval` on the same samples, and the install left the CPU torch in place."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_support import eval_world, predictions

BIN = Path(sys.executable).parent
LMMS_EVAL = BIN / "lmms-eval"

pytestmark = [
    pytest.mark.slow,  # lmms-eval's start-up alone (task registry, datasets) takes tens of seconds on 2 cores
    pytest.mark.skipif(not LMMS_EVAL.exists(), reason="lmms-eval is not installed here (make install)"),
]

TASK = "llavakit_synth_color"
# The world's `synth_color` task as an lmms-eval task: the same records, question and generation
# settings (greedy, 16 new tokens, no stop strings: lmms-eval's default "\n\n" would cut replies that
# `llavakit eval` keeps), scored by the same short-answer accuracy.
TASK_YAML = f"""\
task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{records}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 16
  temperature: 0
  do_sample: false
  until: []
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = """\
from pathlib import Path

from PIL import Image

from llavakit.evaluation.text import short_answer_accuracy

WORLD = Path({world!r})


def doc_to_visual(doc):
    with Image.open(WORLD / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    return {{"accuracy": short_answer_accuracy(results[0], [doc["answer"]])}}
"""


def run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(cwd / "hf-home")}  # the json task's dataset cache stays in the test's folder
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_lmms_eval_command_scores_as_llavakit_eval(tmp_path, onevision_dir):
    world = eval_world()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(records=world / "test" / "color.jsonl"))
    (tasks / "utils.py").write_text(TASK_UTILS.format(world=str(world)))

    run([str(LMMS_EVAL), "--model", "llavakit",
         "--model_args", f"pretrained={onevision_dir},dtype=float32,device=cpu,threads=1",
         "--tasks", TASK, "--include_path", str(tasks), "--batch_size", "2",
         "--output_path", str(tmp_path / "lmms"), "--log_samples"], tmp_path)
    run([str(BIN / "llavakit"), "eval", "--model", str(onevision_dir), "--tasks", "synth_color",
         "--data-root", str(world), "--out", str(tmp_path / "llavakit"), "--threads", "1", "--no-progress"], tmp_path)

    [results_file] = (tmp_path / "lmms").rglob("*_results.json")
    lmms_score = json.loads(results_file.read_text())["results"][TASK]["accuracy,none"]
    [samples_file] = (tmp_path / "lmms").rglob(f"*_samples_{TASK}.jsonl")
    lmms_samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
    ours = json.loads((tmp_path / "llavakit" / "results.json").read_text())["tasks"]["synth_color"]
    records = [json.loads(line) for line in (world / "test" / "color.jsonl").read_text().splitlines()]
    replies = {p["id"]: p["prediction"] for p in predictions(tmp_path / "llavakit", "synth_color")}

    assert len(lmms_samples) == ours["n"] == len(records)
    for sample in sorted(lmms_samples, key=lambda s: s["doc_id"]):
        record = records[sample["doc_id"]]
        assert sample["target"] == record["answer"]
        reply = sample["filtered_resps"]
        assert (reply[0] if isinstance(reply, list) else reply) == replies[record["id"]], record["id"]
    assert lmms_score == pytest.approx(ours["accuracy"], abs=1e-12)


def test_the_cpu_torch_is_still_installed():
    """lmms-eval's own requirements (torchvision, av<16) would have replaced torch with a CUDA build."""
    import torch

    assert importlib.metadata.version("torch") == "2.13.0+cpu"
    assert torch.version.cuda is None
    assert importlib.metadata.version("lmms_eval") == "0.7.3"
