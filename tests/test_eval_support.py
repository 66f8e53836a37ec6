"""Shared pieces of the evaluation tests (no tests here): a small synthetic world (`eval_world()`), one torch thread,
and helpers to read an output folder. Test modules import what they use (pytest puts this folder on
sys.path); the tiny model is conftest's session-wide ``onevision_dir``."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest

SYNTH_TASKS = [f"synth_{t}" for t in ("color", "shape", "count", "position", "hires_detail", "spot_difference",
                                      "which_image", "video_direction", "multiview")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Model work with one torch thread (two busy cores; more threads only fight each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def eval_world() -> Path:
    """A synthetic world with 6 questions per eval task and almost no training data (0.3 s), made once
    per test session."""
    from llavakit.synth import WorldSettings, generate_world

    folder = Path(tempfile.mkdtemp(prefix="llavakit-eval-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    settings = WorldSettings(seed=0, eval_per_task=6, dev_per_task=1, paraphrase_per_task=1, stage1_captions=1,
                             train_per_task=1)
    return generate_world(folder / "world", settings, progress=False)


def predictions(out: Path, task: str) -> list[dict]:
    path = out / "predictions" / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prediction_lines(out: Path) -> int:
    """Complete lines in every predictions file of a run folder."""
    folder = out / "predictions"
    if not folder.is_dir():
        return 0
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def png(path: Path, color=(200, 30, 30), size=(40, 32)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path
