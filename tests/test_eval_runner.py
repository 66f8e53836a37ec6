"""`llavakit eval` end to end on the synthetic tasks with a tiny random model: killed halfway and
resumed gives the same results as an uninterrupted run; shards merge to the unsharded result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_eval_support import (
    SYNTH_TASKS,
    eval_world,
    one_torch_thread,  # noqa: F401 - autouse fixture
    prediction_lines,
    predictions,
)

import llavakit
from llavakit.api import Llava
from llavakit.evaluation.runner import RunMismatchError, evaluate
from llavakit.evaluation.store import Shard
from llavakit.evaluation.task_spec import load_task


@pytest.fixture(scope="module")
def model(onevision_dir):
    return llavakit.load(onevision_dir)


@pytest.fixture(scope="module")
def world():
    return eval_world()


def _counting(monkeypatch) -> list[int]:
    """Count the samples Llava.generate is asked for."""
    counts: list[int] = []
    original = Llava.generate

    def generate(self, conversations, *args, **kwargs):
        counts.append(len(conversations))
        return original(self, conversations, *args, **kwargs)

    monkeypatch.setattr(Llava, "generate", generate)
    return counts


@pytest.mark.slow
def test_killed_run_resumes_to_the_results_of_an_uninterrupted_run(tmp_path, onevision_dir, world, monkeypatch):
    total = 6 * len(SYNTH_TASKS)
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "llavakit", "eval", "--model", str(onevision_dir),
               "--tasks", ",".join(SYNTH_TASKS),
               "--data-root", str(world), "--out", str(killed), "--batch-size", "2", "--threads", "1",
               "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while prediction_lines(killed) < 3:
        assert process.poll() is None, f"eval ended before it could be killed:\n{process.stdout.read().decode()}"
        assert time.monotonic() < deadline, "no predictions within 240 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    done_before = prediction_lines(killed)
    assert 3 <= done_before < total
    assert not (killed / "results.json").exists()

    counts = _counting(monkeypatch)
    resumed = evaluate(onevision_dir, SYNTH_TASKS, killed, data_root=world, batch_size=2, progress=False)
    assert sum(counts) == total - done_before  # nothing predicted before the kill is predicted again

    fresh = evaluate(onevision_dir, SYNTH_TASKS, tmp_path / "fresh", data_root=world, batch_size=2,
                     progress=False)
    assert resumed == {k: {**v} for k, v in fresh.items()}
    assert list(resumed) == SYNTH_TASKS
    world = json.loads((world / "world.json").read_text())
    for task, row in resumed.items():
        metric = "reasoned_accuracy" if task == "synth_position" else "accuracy"  # position replies reason first
        assert row["n"] == 6 and row["metric"] == metric and 0.0 <= row["accuracy"] <= 1.0
        assert row["chance"] == pytest.approx(world["tasks"][task.removeprefix("synth_")]["chance"])
        assert (killed / "predictions" / f"{task}.jsonl").read_text() == \
            (tmp_path / "fresh" / "predictions" / f"{task}.jsonl").read_text()
        lines = predictions(killed, task)
        assert [p["id"] for p in lines] == [f"test-{task.removeprefix('synth_')}-{i:05d}" for i in range(6)]
    saved = json.loads((killed / "results.json").read_text())
    assert saved["tasks"] == json.loads(json.dumps(resumed))


def test_shards_merge_to_the_unsharded_result(tmp_path, model, world):
    tasks = ["synth_count", "synth_which_image"]
    whole = evaluate(model, tasks, tmp_path / "whole", data_root=world, batch_size=1, limit=3, progress=False)
    sharded = tmp_path / "sharded"
    first = evaluate(model, tasks, sharded, data_root=world, batch_size=1, limit=3, progress=False,
                     shard=Shard(0, 2))
    assert first == {}  # shard 1 has not run yet
    assert sorted(p.name for p in (sharded / "predictions").iterdir()) == [
        "synth_count.shard-0-of-2.jsonl", "synth_which_image.shard-0-of-2.jsonl"]
    second = evaluate(model, tasks, sharded, data_root=world, batch_size=1, limit=3, progress=False,
                      shard=Shard.from_env({"RANK": "1", "WORLD_SIZE": "2"}))
    assert second == whole
    for task in tasks:
        assert predictions(sharded, task) == predictions(tmp_path / "whole", task)


@pytest.mark.slow
def test_two_processes_at_once(tmp_path, onevision_dir, world):
    """torchrun-style: two `llavakit eval` processes with RANK/WORLD_SIZE, started together; whichever
    finishes last merges and scores."""
    tasks = ["synth_color", "synth_spot_difference"]
    out = tmp_path / "parallel"
    command = [sys.executable, "-m", "llavakit", "eval", "--model", str(onevision_dir), "--tasks", ",".join(tasks),
               "--data-root", str(world), "--out", str(out), "--batch-size", "1", "--limit", "3", "--threads", "1",
               "--no-progress"]
    processes = [subprocess.Popen(command, env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    scored = [line.split()[:2] for text in outputs for line in text.splitlines()]
    assert ["synth_color", "accuracy"] in scored  # the table of the process that merged
    whole = evaluate(onevision_dir, tasks, tmp_path / "whole", data_root=world, batch_size=1, limit=3,
                     progress=False)
    assert json.loads((out / "results.json").read_text())["tasks"] == json.loads(json.dumps(whole))
    for task in tasks:
        assert predictions(out, task) == predictions(tmp_path / "whole", task)


def test_a_finished_run_is_not_loaded_again(tmp_path, model, world):
    out = tmp_path / "run"
    first = evaluate(model, ["synth_color"], out, data_root=world, limit=2, progress=False)
    again = evaluate(tmp_path / "no-such-model", ["synth_color"], out, data_root=world, limit=2, progress=False)
    assert again == first


def test_another_task_definition_is_refused(tmp_path, model, world):
    out = tmp_path / "run"
    evaluate(model, ["synth_color"], out, data_root=world, limit=1, progress=False)
    spec = load_task("synth_color")
    changed = spec.model_copy(update={"generation": spec.generation.model_copy(update={"max_new_tokens": 3})})
    with pytest.raises(RunMismatchError, match="synth_color was predicted with another definition"):
        evaluate(model, [changed], out, data_root=world, limit=1, progress=False)


def test_another_model_is_refused(tmp_path, onevision_dir, world):
    out = tmp_path / "run"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "synth_color.jsonl").write_text('{"id": "x", "prediction": "red"}\n')
    (out / "run.json").write_text(json.dumps({"model": "/elsewhere/model", "tasks": {"synth_color": {}}}))
    with pytest.raises(RunMismatchError, match="holds predictions of model /elsewhere/model"):
        evaluate(onevision_dir, ["synth_color"], out, data_root=world, limit=1, progress=False)


def test_cli_prints_the_table_and_lists_tasks(tmp_path, onevision_dir, world, capsys):
    from llavakit.cli import main

    assert main(["eval", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "synth_multiview" in listed and "vqav2" in listed
    out = tmp_path / "run"
    assert main(["eval", "--model", str(onevision_dir), "--tasks", "synth_position", "--data-root", str(world),
                 "--out", str(out), "--limit", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "synth_position" in printed and "accuracy" in printed and str(out / "results.json") in printed
    assert main(["eval", "--model", str(onevision_dir), "--tasks", "synth_nope", "--out", str(out)]) == 2
    assert "unknown task 'synth_nope'" in capsys.readouterr().err
    assert main(["eval", "--tasks", "synth_color"]) == 2
    assert "--model, --out required" in capsys.readouterr().err


def test_cli_reads_the_split_asked_for(tmp_path, onevision_dir, world, capsys):
    """`--split dev` reads the world's dev questions (their ids say so); a split the task does not
    name is refused in one line that lists the task's splits."""
    from llavakit.cli import main

    out = tmp_path / "dev"
    assert main(["eval", "--model", str(onevision_dir), "--tasks", "synth_color", "--data-root", str(world),
                 "--out", str(out), "--limit", "2", "--split", "dev", "--no-progress"]) == 0
    ids = [row["id"] for row in predictions(out, "synth_color")]
    dev_ids = [json.loads(line)["id"] for line in (world / "dev" / "color.jsonl").read_text().splitlines()][:2]
    test_ids = {json.loads(line)["id"] for line in (world / "test" / "color.jsonl").read_text().splitlines()}
    assert ids == dev_ids and not set(ids) & test_ids
    capsys.readouterr()
    assert main(["eval", "--model", str(onevision_dir), "--tasks", "synth_color", "--data-root", str(world),
                 "--out", str(tmp_path / "x"), "--split", "validation", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no split 'validation' (its splits: dev, test, test_paraphrase)" in err and "synth_color" in err
    assert len(err.splitlines()) == 1


def test_cli_says_when_split_does_not_apply_to_a_one_file_task(tmp_path, onevision_dir, world, capsys):
    """A task that names no splits is read from its one file, and `--split` says so for it."""
    import yaml

    from llavakit.cli import main
    from llavakit.evaluation.task_spec import load_task

    one_file = load_task("synth_color").model_dump(mode="json", exclude={"data": {"splits"}})
    one_file["name"] = "color_one_file"
    task = tmp_path / "color_one_file.yaml"
    task.write_text(yaml.safe_dump(one_file))
    out = tmp_path / "out"
    assert main(["eval", "--model", str(onevision_dir), "--tasks", f"synth_shape,{task}", "--data-root", str(world),
                 "--out", str(out), "--limit", "2", "--split", "dev", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert ("task color_one_file names no splits; --split dev does not apply to it, its one file "
            "(test/color.jsonl) is read") in err and "synth_shape names no splits" not in err
    assert [row["id"] for row in predictions(out, "color_one_file")][0].startswith("test-")
    assert [row["id"] for row in predictions(out, "synth_shape")][0].startswith("dev-")
