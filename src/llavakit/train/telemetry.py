"""Training telemetry: a JSONL log (the source of truth for plots) that also feeds the run's
trackers (TensorBoard, W&B: `train.tracking`), and throughput."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llavakit.train.tracking import Tracker, scalars


class MetricsLog:
    """Append-only JSONL of one record per logged step. On resume, records after the resumed step
    are dropped first, so the file always describes one consistent run."""

    def __init__(self, path: Path, resume_step: int | None, trackers: list[Tracker] = ()):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        elif path.is_file():
            path.unlink()
        if kept:
            path.write_text("\n".join(kept) + "\n")
        elif path.exists():
            path.unlink()
        self.trackers = list(trackers)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        values = scalars(record)
        for tracker in self.trackers:
            tracker.log(values, record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Throughput:
    """Tokens per second over a sliding window of steps."""

    def __init__(self, window: int = 20):
        self.window, self.events = window, []

    def add(self, tokens: int) -> float:
        self.events.append((time.perf_counter(), tokens))
        self.events = self.events[-self.window:]
        if len(self.events) < 2:
            return 0.0
        elapsed = self.events[-1][0] - self.events[0][0]
        return sum(t for _, t in self.events[1:]) / elapsed if elapsed > 0 else 0.0

    def exclude(self, seconds: float) -> None:
        """Leave a pause (an evaluation during training) out of the window: the steps before it move
        forward by its length."""
        self.events = [(at + seconds, tokens) for at, tokens in self.events]
