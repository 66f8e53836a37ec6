"""Training checkpoints: atomic, the last K kept, everything needed to resume exactly.

``RUN/checkpoints/step-00000042/`` holds ``state/`` (model, optimizer, scheduler and every
process's RNG, written by accelerate whatever the backend), ``model/`` (a native checkpoint that
``llavakit.load`` and ``serve`` read; under LoRA only with ``lora.save_merged``), under LoRA
``adapter/`` (peft's adapter directory, ``checkpoint.adapter``) and ``trainer_state.json``. It is assembled under a hidden
name and renamed when complete, so a kill never leaves a half-written checkpoint under a final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from llavakit.utils.atomic import atomic_write_json

STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def staging_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f".{step_name(step)}.partial"


def publish(run_dir: Path, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write trainer_state.json last, rename the staging directory into place, prune old ones."""
    staging, final = staging_dir(run_dir, step), checkpoint_root(run_dir) / step_name(step)
    write_json_atomic(staging / "trainer_state.json", trainer_state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clear_staging(run_dir: Path) -> None:
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for leftover in root.glob(".step-*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())
