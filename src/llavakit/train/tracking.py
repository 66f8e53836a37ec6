"""Experiment trackers: where a run's metrics go besides ``RUN/metrics.jsonl`` (always written).

``report_to`` in the training config lists them: ``tensorboard`` (``RUN/tensorboard``, through
torch's SummaryWriter) and ``wandb`` (Weights & Biases; ``wandb.mode: offline`` or
``WANDB_MODE=offline`` writes the run under ``RUN/wandb`` for a later ``wandb sync``). Only the
main process opens trackers. A resumed run continues the same W&B run: its id is kept in
``RUN/wandb-run-id``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from llavakit.train.config import TrainConfig, TrainConfigError, WandbSettings

WANDB_ID_FILE = "wandb-run-id"


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, directory: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the points a killed run logged after the resumed step,
        # as metrics.jsonl drops them
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(directory), purge_step=purge)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # as the JSONL line: a kill loses no logged point that a resume keeps

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, settings: WandbSettings, run_dir: Path, config: dict[str, Any], resume: bool):
        try:
            import wandb
        except ImportError:
            raise TrainConfigError("report_to lists wandb but the wandb package is not installed: "
                                   "pip install 'llavakit[train]' (or pip install wandb)") from None
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None  # None: a new run
        self.run = wandb.init(
            project=settings.project, entity=settings.entity, name=settings.name or run_dir.name,
            tags=settings.tags or None, config=config, id=run_id, resume="allow", mode=settings.mode,
            dir=os.environ.get("WANDB_DIR") or str(run_dir),
        )
        id_file.write_text(self.run.id + "\n")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(config: TrainConfig, run_dir: Path, resume_step: int | None) -> list[Tracker]:
    """The trackers ``report_to`` names besides jsonl (which `telemetry.MetricsLog` writes itself);
    ``resume_step``: the step a resumed run continues from (None: a new run)."""
    trackers: list[Tracker] = []
    resume = resume_step is not None
    if "tensorboard" in config.report_to:
        try:
            trackers.append(TensorBoardTracker(run_dir / "tensorboard", resume_step))
        except ImportError:  # tensorboard is optional: the JSONL log always exists
            pass
    if "wandb" in config.report_to:
        trackers.append(WandbTracker(config.wandb, run_dir, config.model_dump(mode="json"), resume))
    return trackers


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record that trackers plot (not the step itself, not flags)."""
    return {key: value for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
