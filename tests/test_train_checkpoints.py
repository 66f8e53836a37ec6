"""Checkpoints survive crashes at every point of publishing, resume reads only tensors and JSON,
a full disk is named as such, and a run is never replaced unless asked (issue 30, items 9, 10, 12, 13)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llavakit.errors import CheckpointError
from llavakit.train import checkpoints
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from train_fixtures import base_config, write_caption_data


class Crash(Exception):
    """Stands for a kill: the process stops between two file operations."""


# ---- publishing (item 9) ------------------------------------------------------------------------
def _stage(run: Path, step: int, content: bytes) -> None:
    staging = checkpoints.staging_dir(run, step)
    for name in ("state/optimizer.bin", "state/model.safetensors", "model/model.safetensors"):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(content)


def _publish(run: Path, step: int, content: bytes, keep_last: int = 2) -> None:
    checkpoints.recover(run)  # as Trainer.save_checkpoint does before staging
    _stage(run, step, content)
    checkpoints.publish(run, step, {"step": step}, keep_last)


def _crash_at(monkeypatch, name: str, nth: int, step_dirs_only: bool = True):
    """Make the nth call of os.replace (on step directories) or shutil.rmtree raise Crash; the
    rmtree crash deletes one file first, as a kill in the middle of a deletion would."""
    calls = []
    original = getattr(os if name == "replace" else shutil, name)

    def crashing(path, *args, **kwargs):
        target = args[0] if name == "replace" else path
        if not step_dirs_only or Path(target).parent.name == "checkpoints":
            calls.append(path)
            if len(calls) == nth:
                if name == "rmtree":
                    next(p for p in sorted(Path(path).rglob("*")) if p.is_file()).unlink()
                raise Crash(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os if name == "replace" else shutil, name, crashing)


def _final_dirs_complete(run: Path) -> None:
    for directory in (run / "checkpoints").iterdir():
        if not directory.name.startswith("."):
            assert checkpoints.is_complete(directory), directory


@pytest.mark.parametrize("nth", [1, 2])
def test_a_crash_while_republishing_a_step_keeps_that_step(tmp_path, monkeypatch, nth):
    _publish(tmp_path, 1, b"one")
    _publish(tmp_path, 2, b"two, first save")
    _stage(tmp_path, 2, b"two, saved again on resume")
    _crash_at(monkeypatch, "replace", nth)
    with pytest.raises(Crash):
        checkpoints.publish(tmp_path, 2, {"step": 2}, keep_last=2)
    monkeypatch.undo()
    _final_dirs_complete(tmp_path)
    checkpoints.recover(tmp_path)
    found = checkpoints.latest(tmp_path)
    assert found is not None and found.name == "step-00000002"
    assert (found / "model" / "model.safetensors").read_bytes() in (b"two, first save", b"two, saved again on resume")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]


def test_a_crash_while_pruning_never_leaves_part_of_a_step_under_its_name(tmp_path, monkeypatch):
    _publish(tmp_path, 1, b"one")
    _publish(tmp_path, 2, b"two")
    _stage(tmp_path, 3, b"three")
    _crash_at(monkeypatch, "rmtree", 1, step_dirs_only=False)
    with pytest.raises(Crash):
        checkpoints.publish(tmp_path, 3, {"step": 3}, keep_last=2)
    monkeypatch.undo()
    _final_dirs_complete(tmp_path)
    checkpoints.recover(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_a_step_with_a_missing_or_cut_file_is_not_resumed_and_is_removed(tmp_path, capsys):
    _publish(tmp_path, 1, b"one")
    _publish(tmp_path, 2, b"two")
    _publish(tmp_path, 3, b"three", keep_last=3)
    (tmp_path / "checkpoints" / "step-00000003" / "model" / "model.safetensors").unlink()
    (tmp_path / "checkpoints" / "step-00000002" / "state" / "optimizer.bin").write_bytes(b"tw")
    assert checkpoints.latest(tmp_path).name == "step-00000001"
    checkpoints.recover(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    assert "step-00000003 is incomplete" in capsys.readouterr().out


# ---- real training runs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=8)


def _config(data: Path, run: Path, onevision_dir: Path, **overrides) -> dict:
    settings = {"max_steps": 2, "save": {"every_steps": 1, "keep_last": 2}} | overrides
    return base_config(data, run, model={"checkpoint": str(onevision_dir)}, **settings)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- resume runs no code from a checkpoint (item 10) --------------------------------------------
class RunsCode:
    """Unpickled with weights_only=False, this creates the marker file: a stand-in for any command."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("target", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_resume_never_runs_code_from_a_tampered_state_file(data, onevision_dir, tmp_path, target):
    run = tmp_path / "run"
    Trainer(build_config(_config(data, run, onevision_dir))).run()
    state = run / "checkpoints" / "step-00000002" / "state"
    marker = tmp_path / "code-ran"
    torch.save(RunsCode(marker), state / target)
    listed = json.loads((state.parent / "trainer_state.json").read_text())  # the tamperer fixes the list too
    listed["files"] = checkpoints.file_sizes(state.parent) | {"trainer_state.json": 0}
    del listed["files"]["trainer_state.json"]
    (state.parent / "trainer_state.json").write_text(json.dumps(listed))
    resumed = Trainer(build_config(_config(data, run, onevision_dir)))
    # custom_checkpoint_*.pkl: accelerate's file for registered objects, unpickled with weights_only=False
    refusal = "does not write and resume never loads" if target.startswith("custom") else \
        r"refusing it \(Unsupported global: GLOBAL (builtins\.)?exec\)"
    with pytest.raises(CheckpointError, match=refusal):
        resumed.run(resume=True)
    assert not marker.exists()


# ---- a full disk (item 12) ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_full_disk_is_named_and_earlier_checkpoints_stay(data, onevision_dir, tmp_path):
    """A real filesystem of 2 MiB (tmpfs in a private mount namespace): the first checkpoint fits,
    the second does not; the run ends with one line naming the place, step 1 stays complete."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    small, copy = tmp_path / "small", tmp_path / "copy"
    small.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(data, small / "run", onevision_dir, max_steps=4)))
    script = (f"mount -t tmpfs -o size=2m tmpfs {small} || exit 77; "
              f"{sys.executable} -m llavakit train {config}; echo exit=$?; cp -a {small}/run {copy}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode == 77 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[-200:]}")
    output = done.stdout + done.stderr
    assert "exit=2" in output  # a user error: one line, no traceback
    assert "Traceback" not in output
    assert (f"llavakit train: disk full: no space left on the filesystem of {small}/run/checkpoints while writing "
            "checkpoint step-00000002; earlier checkpoints are intact") in output, output[-3000:]
    assert "unexpected pos" not in output
    assert [p.name for p in (copy / "checkpoints").iterdir()] == ["step-00000001"]  # the partial one is gone
    assert checkpoints.is_complete(copy / "checkpoints" / "step-00000001")


def test_a_write_failing_with_enospc_is_named_as_a_full_disk(data, onevision_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(build_config(_config(data, run, onevision_dir, max_steps=3)))
    real_save, saves = torch.save, []

    def save(obj, target, *args, **kwargs):
        saves.append(target)
        if len(saves) == 3:  # the second checkpoint's optimizer state (each has optimizer and RNG)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(checkpoints.DiskFullError, match=f"filesystem of {run}/checkpoints while writing checkpoint "
                                                        "step-00000002"):
        trainer.run()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


# ---- a run is replaced only when asked; TensorBoard trimmed on resume (item 13) -----------------
def test_training_into_a_run_is_refused_unless_overwrite(data, onevision_dir, tmp_path, capsys):
    from llavakit.cli import main

    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(data, run, onevision_dir)))
    assert main(["train", str(config)]) == 0
    before = (run / "metrics.jsonl").read_bytes()
    (run / "checkpoints" / "step-00000007").mkdir()  # a step only the earlier run has
    capsys.readouterr()
    assert main(["train", str(config)]) == 2  # a user error: one line, exit 2
    assert re.search(r"holds a run \(checkpoints, model, metrics.jsonl.*--resume.*--overwrite",
                     capsys.readouterr().err)
    assert (run / "metrics.jsonl").read_bytes() == before
    assert main(["train", str(config), "--resume", "--overwrite"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["train", str(config), "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert _losses(run) == [json.loads(line)["loss"] for line in before.decode().splitlines()]


def _tensorboard_losses(run: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("loss")]


def test_resume_trims_tensorboard_as_it_trims_metrics_jsonl(data, onevision_dir, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    config = build_config(_config(data, run, onevision_dir, max_steps=3, tensorboard=True))
    Trainer(config).run()
    first = _tensorboard_losses(run)
    assert [step for step, _ in first] == [1, 2, 3]
    # A kill after step 3 was logged and before its checkpoint: the run resumes from step 2.
    checkpoints.discard(run / "checkpoints" / "step-00000003")
    Trainer(config).run(resume=True)
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    again = _tensorboard_losses(run)
    assert [step for step, _ in again] == [1, 2, 3]
    assert max(abs(a - b) for (_, a), (_, b) in zip(first, again)) < 1e-6
