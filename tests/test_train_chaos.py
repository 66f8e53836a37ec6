"""SIGKILL at random moments: while training, while writing, publishing and pruning checkpoints,
while resuming. Every killed run resumes to the uninterrupted run's losses and weights (issue 30).

The kills come from tests/train_kill.py, which wraps library functions in the child process
only; the moments are drawn from a seeded generator, so the schedule is the same on every machine
(only the kills timed by the clock land at a different point of the work on a slower one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from llavakit.train import checkpoints
from train_fixtures import base_config, write_caption_data

STEPS = 12
KILLS = 20
RUNNER = Path(__file__).with_name("train_kill.py")
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
# How many of each event one attempt can reach (an attempt not killed draws again).
EVENT_COUNTS = {"step": (1, 3), "write": (1, 8), "rename": (1, 4), "delete": (1, 2), "load": (1, 1),
                "time": (5, 40)}
# Each kind of moment several times, in a seeded order: 20 kills.
SCHEDULE = ["step"] * 4 + ["write"] * 4 + ["rename"] * 3 + ["delete"] * 3 + ["load"] * 3 + ["time"] * 3


def schedule(rng: random.Random) -> list[str]:
    """A seeded order of SCHEDULE. Up to the last mid-step kill the sequence of moments does not
    depend on the clock (the mid-step kills come among the first six, the clock-timed ones after
    them), so the run cannot end before its mid-step kills on any machine; the first attempt, not
    a resume, gets a moment it reaches (not "load")."""
    order = rng.sample([e for e in SCHEDULE if e not in ("step", "time")], len(SCHEDULE) - 7)
    for position in sorted(rng.sample(range(6), SCHEDULE.count("step"))):
        order.insert(position, "step")
    last_step = max(i for i, e in enumerate(order) if e == "step")
    for position in sorted(rng.sample(range(last_step + 1, len(order) + 1), SCHEDULE.count("time"))):
        order.insert(position, "time")
    if order[0] == "load":
        first = next(i for i, e in enumerate(order) if e != "load")
        order[0], order[first] = order[first], order[0]
    return order


def _config(tmp_path: Path, data: Path, onevision_dir: Path, name: str) -> Path:
    config = base_config(data, tmp_path / name, model={"checkpoint": str(onevision_dir)}, max_steps=STEPS,
                         save={"every_steps": 1, "keep_last": 2}, tensorboard=TENSORBOARD)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *extra: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [str(RUNNER), kill[0], str(kill[1]), "--"] if kill else ["-m", "llavakit", "train"]
    return subprocess.run([sys.executable, *command, str(config), *extra], env=env, capture_output=True,
                          text=True, timeout=600)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def _assert_checkpoints_complete(run: Path) -> None:
    root = run / "checkpoints"
    for directory in root.iterdir() if root.is_dir() else ():
        if directory.name.startswith("."):
            continue  # hidden: staging, a step renamed aside, one being deleted
        assert checkpoints.is_complete(directory), directory
        load_file(str(directory / "model" / "model.safetensors"))
        load_file(str(directory / "state" / "model.safetensors"))


def _assert_same_run(run: Path, reference: Path) -> None:
    got, expected = _losses(run), _losses(reference)
    assert len(got) == STEPS and max(abs(a - b) for a, b in zip(got, expected)) < 1e-6
    weights, reference_weights = _weights(run), _weights(reference)
    assert weights.keys() == reference_weights.keys()
    assert all((weights[k] - v).abs().max() < 1e-6 for k, v in reference_weights.items())
    if TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        points = [(e.step, e.value) for e in events.Scalars("loss")]
        assert [step for step, _ in points] == list(range(1, STEPS + 1))
        assert max(abs(value - loss) for (_, value), loss in zip(points, expected)) < 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=16)


@pytest.fixture(scope="module")
def reference(data, onevision_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    done = _train(_config(root, data, onevision_dir, "straight"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return root / "straight"


@pytest.mark.slow
def test_killed_while_resaving_a_finished_run_it_still_resumes(data, onevision_dir, reference, tmp_path):
    """``--resume`` of a finished run saves its last step again: killed while the old copy is
    deleted, between the renames that put the new one in place, the step is never lost."""
    config = _config(tmp_path, data, onevision_dir, "run")
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for moment in [("delete", 1), ("rename", 1), ("rename", 2)]:
        done = _train(config, "--resume", kill=moment)
        assert done.returncode == -signal.SIGKILL, (moment, done.stdout[-2000:] + done.stderr[-3000:])
        _assert_checkpoints_complete(run)
    done = _train(config, "--resume")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / checkpoints.step_name(STEPS)}" in done.stdout
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_twenty_kills_at_random_moments_resume_to_the_uninterrupted_run(data, onevision_dir, reference, tmp_path):
    rng = random.Random(30)
    moments = schedule(rng)
    config = _config(tmp_path, data, onevision_dir, "chaos")
    run = tmp_path / "chaos"
    fired, attempts, finished = [], 0, False
    while moments:
        attempts += 1
        assert attempts <= 3 * KILLS, f"only {len(fired)} kills fired: {fired}"
        event = moments[0]
        if event == "step" and finished:  # no step is left to kill
            moments[0] = event = rng.choice([e for e in EVENT_COUNTS if e != "step"])
        moment = (event, rng.randint(*EVENT_COUNTS[event]))
        done = _train(config, *(["--resume"] if attempts > 1 else []), kill=moment)
        if done.returncode == -signal.SIGKILL:
            fired.append(moment)
            moments.pop(0)
            _assert_checkpoints_complete(run)
        else:  # the attempt ended before the moment came: the run is complete
            assert done.returncode == 0, (moment, done.stdout[-2000:] + done.stderr[-3000:])
            finished = True
    assert len(fired) == KILLS
    assert {"step", "write", "rename", "delete", "load"} <= {event for event, _ in fired}
    done = _train(config, "--resume")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_same_run(run, reference)
