"""Evaluation during training: the scores logged at the chosen steps equal `llavakit eval` on the
checkpoints of those steps, training gives the same losses with and without it (the model has
dropout and one task samples from the global RNG, so both would show), and RUN/best is the best
step's model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_eval_support import eval_world, one_torch_thread, predictions  # noqa: F401 - autouse fixture
from train_fixtures import base_config, write_caption_data

import llavakit
from llavakit.evaluation.runner import evaluate
from llavakit.evaluation.samples import TaskDataError
from llavakit.evaluation.task_spec import load_task
from llavakit.train.config import TrainConfigError, build_config
from llavakit.train.in_loop_eval import read_best
from llavakit.train.loop import Trainer
from llavakit.train.telemetry import read_metrics

LIMIT = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=8)


@pytest.fixture(scope="module")
def dropout_model(onevision_dir, tmp_path_factory) -> Path:
    """The tiny model with attention dropout in its LLM: training draws from the torch RNG."""
    copy = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(onevision_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["attention_dropout"] = 0.1
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.fixture(scope="module")
def sampled_task(tmp_path_factory) -> Path:
    """synth_color answered by sampling without a seed: generation draws from the global RNG."""
    spec = load_task("synth_color").model_dump()
    spec["name"] = "synth_color_sampled"
    spec["generation"]["temperature"] = 1.0
    path = tmp_path_factory.mktemp("tasks") / "synth_color_sampled.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _config(data: Path, run: Path, model: Path, evaluation: dict | None) -> dict:
    config = base_config(data, run, model={"checkpoint": str(model)}, max_steps=4,
                         trainable=[{"pattern": ".", "lr": 3e-3}],  # large enough that predictions change
                         optim={"warmup_ratio": 0.0, "schedule": "constant"},
                         save={"every_steps": 2, "keep_last": 3})
    if evaluation is not None:
        config["eval"] = evaluation
    return config


def _eval_settings(world: Path, sampled_task: Path, **extra) -> dict:
    # The test split: the eval world holds six test questions a task and one dev question.
    return {"tasks": ["synth_color", str(sampled_task)], "every_steps": 2, "limit": LIMIT, "batch_size": LIMIT,
            "data_root": str(world), "best_metric": "synth_color/accuracy", "split": "test", **extra}


def _prediction_texts(folder: Path, task: str) -> list[str]:
    lines = (folder / "predictions" / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line)["prediction"] for line in lines if line.strip()]


def test_in_loop_scores_equal_eval_of_the_checkpoints_and_losses_do_not_change(
        data, dropout_model, sampled_task, tmp_path):
    world = eval_world()
    run = tmp_path / "with-eval"
    config = _config(data, run, dropout_model, _eval_settings(world, sampled_task))
    Trainer(build_config({**config, "tensorboard": True})).run()
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    evaluated = {r["step"] for r in records if any(k.startswith("eval/") for k in r)}
    assert evaluated == {2, 4}
    assert {"eval/synth_color/accuracy", "eval/synth_color_sampled/accuracy", "loss"} <= set(records[1])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("eval/synth_color/accuracy")]
    assert logged == [(step, pytest.approx(records[step - 1]["eval/synth_color/accuracy"])) for step in (2, 4)]

    texts = {}
    for step in (2, 4):
        checkpoint = run / "checkpoints" / f"step-{step:08d}" / "model"
        out = tmp_path / f"eval-{step}"
        if step == 2:  # the command, as a user runs it
            subprocess.run([sys.executable, "-m", "llavakit", "eval", "--model", str(checkpoint), "--tasks",
                            "synth_color", "--data-root", str(world), "--out", str(out), "--limit", str(LIMIT),
                            "--batch-size", str(LIMIT), "--threads", "1", "--no-progress"], check=True,
                           capture_output=True)
            after = json.loads((out / "results.json").read_text())["tasks"]
        else:  # the function behind it
            after = evaluate(checkpoint, ["synth_color"], out, data_root=world, limit=LIMIT, batch_size=LIMIT,
                             progress=False)
        assert records[step - 1]["eval/synth_color/accuracy"] == after["synth_color"]["accuracy"]
        in_loop = _prediction_texts(run / "eval" / f"step-{step:08d}", "synth_color")
        assert in_loop == _prediction_texts(tmp_path / f"eval-{step}", "synth_color")
        texts[step] = in_loop
    assert texts[2] != texts[4]  # the steps' models differ, so the comparison above could fail

    without = tmp_path / "without-eval"
    Trainer(build_config(_config(data, without, dropout_model, None))).run()
    plain = read_metrics(without / "metrics.jsonl")
    assert [r["loss"] for r in plain] == [r["loss"] for r in records]
    assert not (without / "eval").exists() and not (without / "best").exists()

    best = read_best(run)
    scores = {step: records[step - 1]["eval/synth_color/accuracy"] for step in (2, 4)}
    assert best["score"] == max(scores.values()) and best["metric"] == "synth_color/accuracy"
    assert best["step"] == (2 if scores[2] >= scores[4] else 4)  # a tie keeps the earlier model
    kept = llavakit.load(run / "best").model.state_dict()
    source = llavakit.load(run / "checkpoints" / f"step-{best['step']:08d}" / "model").model.state_dict()
    assert kept.keys() == source.keys() and all(torch.equal(kept[k], source[k]) for k in kept)


def test_best_metric_must_name_an_evaluated_task(data, onevision_dir, tmp_path):
    config = _config(data, tmp_path / "run", onevision_dir,
                     {"tasks": ["synth_color"], "every_steps": 2, "best_metric": "synth_count/accuracy",
                      "data_root": str(eval_world())})
    with pytest.raises(TrainConfigError, match="synth_count.*not in eval.tasks"):
        Trainer(build_config(config)).setup()
    config["eval"] = {"tasks": ["synth_color"], "every_steps": 2, "data_root": str(tmp_path / "no-world")}
    with pytest.raises(TaskDataError, match="synth_color"):  # before the first step, not at step 2
        Trainer(build_config(config)).setup()
    config["eval"]["best_metric"] = "accuracy"
    with pytest.raises(TrainConfigError, match="expected 'task/score'"):
        build_config(config)
    config["eval"] = {"tasks": ["synth_color"], "every_steps": 2}
    with pytest.raises(TrainConfigError, match="fsdp"):
        build_config({**config, "distributed": "fsdp"})


def test_eval_paths_in_a_yaml_are_relative_to_it(tmp_path):
    from llavakit.train.config import load_config

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text("name: mine\n")
    (tmp_path / "world").mkdir()
    (tmp_path / "start").mkdir()  # the checkpoint must exist when a config is read to run
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "stage": "stage2", "model": {"checkpoint": "start"}, "output_dir": "run",
        "data": {"sources": [{"path": "data.jsonl"}]},
        "eval": {"tasks": ["synth_color", "tasks/mine.yaml"], "every_steps": 10, "data_root": "world"}}))
    config = load_config(tmp_path / "train.yaml")
    assert config.eval.tasks == ["synth_color", str(tmp_path / "tasks" / "mine.yaml")]
    assert config.eval.data_root == str(tmp_path / "world")
    assert config.report_to == ["tensorboard", "jsonl"]  # today's behaviour by default


@pytest.mark.slow
def test_ddp_evaluates_on_the_main_process_while_the_other_waits(data, onevision_dir, tmp_path):
    """Two CPU processes (gloo): the main one evaluates, the other waits at the barrier; the losses
    are those of one process without evaluation."""
    world = eval_world()
    settings = {"tasks": ["synth_color"], "every_steps": 2, "limit": LIMIT, "batch_size": LIMIT,
                "data_root": str(world), "best_metric": "synth_color/accuracy"}
    runs = {}
    for name, evaluation, processes in (("ddp", settings, 2), ("single", None, 1)):
        config = _config(data, tmp_path / name, onevision_dir, evaluation)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                    if processes == 2 else [sys.executable])
        done = subprocess.run([*launcher, "-m", "llavakit", "train", str(path)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[name] = read_metrics(tmp_path / name / "metrics.jsonl")
    ddp, single = runs["ddp"], runs["single"]
    assert [r["step"] for r in ddp] == [1, 2, 3, 4]  # one record per step: only the main process logs
    assert [r["step"] for r in ddp if "eval/synth_color/accuracy" in r] == [2, 4]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(ddp, single)) < 1e-5
    assert read_best(tmp_path / "ddp")["step"] in (2, 4)


def test_in_loop_evaluation_reads_the_dev_split_unless_told_otherwise(data, onevision_dir, tmp_path):
    """Scores seen during training choose (best_metric), so a real run's evaluation asks the world's
    dev questions (the ids the world wrote there); split: null reads each task's own file (test),
    as does a task file with one file; a split a task does not name stops the run before step 1."""
    world = eval_world()
    one_file = load_task("synth_color").model_dump(mode="json")
    one_file["name"] = "one_file"
    del one_file["data"]["splits"]
    one_file_task = tmp_path / "one_file.yaml"
    one_file_task.write_text(yaml.safe_dump(one_file))

    def asked(name: str, **split) -> dict[str, list[str]]:
        settings = {"tasks": ["synth_color", str(one_file_task)], "every_steps": 2, "at_end": False, "limit": 1,
                    "batch_size": 1, "data_root": str(world), **split}
        config = _config(data, tmp_path / name, onevision_dir, settings)
        Trainer(build_config({**config, "max_steps": 2})).run()
        folder = tmp_path / name / "eval" / "step-00000002"
        return {task: [row["id"] for row in predictions(folder, task)] for task in ("synth_color", "one_file")}

    def first_id(split: str) -> str:
        return json.loads((world / split / "color.jsonl").read_text().splitlines()[0])["id"]

    assert asked("default") == {"synth_color": [first_id("dev")], "one_file": [first_id("test")]}
    assert asked("own-file", split=None) == {"synth_color": [first_id("test")], "one_file": [first_id("test")]}
    assert first_id("dev") != first_id("test")

    config = _config(data, tmp_path / "bad", onevision_dir, {"tasks": ["synth_color"], "every_steps": 2,
                                                               "data_root": str(world), "split": "validation"})
    with pytest.raises(Exception, match=r"synth_color .*no split 'validation' \(its splits: dev, test, test_paraphrase\)"):
        Trainer(build_config(config)).run()
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
