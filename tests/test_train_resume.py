"""A run killed with SIGKILL and resumed gives the same losses, step for step, as one that was
never interrupted; checkpoint directories under their final names are always complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import llavakit
from train_fixtures import base_config, write_caption_data

STEPS = 8


def _write_config(tmp_path: Path, data: Path, onevision_dir: Path, name: str) -> Path:
    config = base_config(data, tmp_path / name, model={"checkpoint": str(onevision_dir)}, max_steps=STEPS,
                         save={"every_steps": 2, "keep_last": 2})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "llavakit", "train", str(config), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_complete(run: Path) -> None:
    for directory in (run / "checkpoints").iterdir():
        if directory.name.startswith("."):
            continue  # a staging directory: hidden, never under a final name
        assert (directory / "trainer_state.json").is_file(), directory
        assert (directory / "state").is_dir() and (directory / "model" / "model.safetensors").is_file(), directory


def _losses_of_a_whole_run(config: Path, run: Path) -> list[float]:
    """Train ``config`` to its end in a subprocess; its STEPS losses."""
    done = _train(config)
    output, _ = done.communicate(timeout=600)
    assert done.returncode == 0, output
    losses = _losses(run)
    assert len(losses) == STEPS
    return losses


def _kill_after_logged_steps(config: Path, run: Path, steps: int) -> None:
    """Train ``config`` and SIGKILL it once ``steps`` steps are logged; every checkpoint it leaves
    must be complete."""
    victim = _train(config)
    deadline = time.time() + 300
    while time.time() < deadline:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if len(lines) >= steps:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    _assert_complete(run)


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_uninterrupted_run(onevision_dir, tmp_path):
    data = write_caption_data(tmp_path / "data", count=16)
    expected = _losses_of_a_whole_run(_write_config(tmp_path, data, onevision_dir, "straight"), tmp_path / "straight")

    config = _write_config(tmp_path, data, onevision_dir, "killed")
    run = tmp_path / "killed"
    _kill_after_logged_steps(config, run, 5)
    survivors = sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
    assert survivors and len(survivors) <= 2  # keep_last

    resumed = _train(config, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    got = _losses(run)
    assert len(got) == STEPS
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-6
    _assert_complete(run)
    final = llavakit.load(run / "model")
    straight = llavakit.load(tmp_path / "straight" / "model")
    state = straight.model.state_dict()
    assert all((v - state[k]).abs().max() < 1e-6 for k, v in final.model.state_dict().items())
