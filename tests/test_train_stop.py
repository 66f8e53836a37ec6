"""stop_at_loss: a stage ends once the mean loss of its last steps is below a threshold, saves a
loadable model there, says so in its summary, and stays ended when resumed."""

from __future__ import annotations

import json

import pytest

import llavakit
from llavakit.train import checkpoints
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from train_fixtures import base_config, write_caption_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=16)


def _config(data, run, onevision_dir, **stop):
    return build_config(base_config(data, run, model={"checkpoint": str(onevision_dir)}, max_steps=6,
                                    stop_at_loss=stop or None))


def _logged_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_threshold_met_ends_the_stage_at_that_step(data, onevision_dir, tmp_path):
    run = tmp_path / "run"
    summary = Trainer(_config(data, run, onevision_dir, below=100.0, window=2, min_steps=3)).run()
    assert summary["steps"] == 3 and summary["planned_steps"] == 6 and summary["stopped_early"]
    assert _logged_steps(run) == [1, 2, 3]
    state = checkpoints.read_state(checkpoints.latest(run))
    assert state["step"] == 3 and state["stopped_early"]
    assert llavakit.load(run / "model").model is not None

    resumed = Trainer(_config(data, run, onevision_dir, below=100.0, window=2, min_steps=3)).run(resume=True)
    assert resumed["steps"] == 3 and resumed["stopped_early"]
    assert _logged_steps(run) == [1, 2, 3]  # no step was trained again or after


def test_a_threshold_never_met_runs_every_step(data, onevision_dir, tmp_path):
    run = tmp_path / "run"
    summary = Trainer(_config(data, run, onevision_dir, below=1e-9, window=2)).run()
    assert summary["steps"] == 6 and not summary["stopped_early"]
    assert _logged_steps(run) == [1, 2, 3, 4, 5, 6]


def test_without_it_the_summary_says_every_planned_step_ran(data, onevision_dir, tmp_path):
    summary = Trainer(_config(data, tmp_path / "run", onevision_dir)).run()
    assert summary["steps"] == summary["planned_steps"] == 6 and not summary["stopped_early"]
