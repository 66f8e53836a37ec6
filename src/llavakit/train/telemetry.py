"""Training telemetry: a JSONL log (the source of truth for plots), TensorBoard, throughput."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL of one record per logged step. On resume, records after the resumed step
    are dropped first, so the file always describes one consistent run."""

    def __init__(self, path: Path, resume_step: int | None, tensorboard_dir: Path | None):
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
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides the points a killed run logged after the resumed step
                purge = resume_step + 1 if resume_step is not None else None
                self.writer = SummaryWriter(str(tensorboard_dir), purge_step=purge)
            except ImportError:  # tensorboard is optional: the JSONL log always exists
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()  # as the JSONL line: a kill loses no logged point that a resume keeps

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
