"""Evaluation during training: ``eval:`` tasks run in-process on the model being trained.

No second copy of the model: the trained model is switched to eval mode, the runner
(`llavakit.evaluation.runner.evaluate`, the one behind ``llavakit eval``) generates and scores the
tasks into ``RUN/eval/step-NNNNNNNN/``, and every module gets its own mode back. The RNG states
(python, numpy, torch, CUDA) are restored afterwards, so the training steps that follow are the
same with and without evaluation. Scores are returned as ``eval/<task>/<score>`` for the metrics
log and trackers; with ``best_metric``, the best model so far is kept in ``RUN/best/`` (replaced
atomically, with ``best.json`` saying its step and score).

The main process evaluates while the others wait at a barrier; a model sharded across processes
(FSDP, DeepSpeed ZeRO-3) cannot generate on one of them, so that combination is refused before
training starts.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llavakit.checkpoint import io
from llavakit.train.config import InLoopEval, TrainConfigError

BEST_DIR = "best"
BEST_FILE = "best.json"  # inside RUN/best: {"step", "metric", "score"}


@contextlib.contextmanager
def paused_training(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; afterwards each module's own mode and every RNG state as
    they were (dropout and sampling draw from them)."""
    modes = {module: module.training for module in model.modules()}
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def eval_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "eval" / f"step-{step:08d}"


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{task: row}`` from the runner -> ``{"eval/<task>/<score>": value}`` (every numeric score)."""
    flat = {}
    for task, row in results.items():
        for name, value in row["scores"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"eval/{task}/{name}"] = float(value)
    return flat


def read_best(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / BEST_DIR / BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class InLoopEvaluator:
    """Built at setup: task files and their data are read and checked before the first step."""

    def __init__(self, settings: InLoopEval, run_dir: Path, accelerator: Any):
        from llavakit.evaluation.samples import load_samples
        from llavakit.evaluation.task_spec import load_task

        self.settings, self.run_dir, self.accelerator = settings, run_dir, accelerator
        _refuse_sharded(accelerator)
        self.specs = [load_task(task, split=settings.split) for task in settings.tasks]
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise TrainConfigError(f"eval.tasks: a task is listed twice ({', '.join(names)})")
        for spec in self.specs:  # missing or bad task data is found now, not after the first N steps
            load_samples(spec, settings.data_root, settings.limit)
        self.best_task = self.best_score = None
        if settings.best_metric is not None:
            self.best_task, self.best_score = settings.best_metric.split("/")
            if self.best_task not in names:
                raise TrainConfigError(f"eval.best_metric={settings.best_metric!r}: task {self.best_task!r} is not "
                                       f"in eval.tasks ({', '.join(names)})")
        self.best: dict[str, Any] | None = None

    def resume(self) -> None:
        """A resumed run compares with the best model it had kept."""
        self.best = read_best(self.run_dir) if self.settings.best_metric else None

    def due(self, step: int, last: bool) -> bool:
        return step % self.settings.every_steps == 0 or (last and self.settings.at_end)

    def run(self, step: int, model: nn.Module, tokenizer: Any, save_model: Callable[[Path], Any]) -> dict[str, float]:
        """Evaluate the model after ``step``; the scores on the main process, {} on the others."""
        scores: dict[str, float] = {}
        if self.accelerator.is_main_process:
            from llavakit.api import Llava
            from llavakit.evaluation.runner import evaluate
            from llavakit.evaluation.store import Shard

            out = eval_dir(self.run_dir, step)
            if out.exists():  # an earlier run's (or an interrupted) evaluation of this step
                shutil.rmtree(out)
            s = self.settings
            with paused_training(model):
                results = evaluate(Llava(model, tokenizer), self.specs, out, data_root=s.data_root,
                                   batch_size=s.batch_size, limit=s.limit, progress=False, shard=Shard(0, 1))
            scores = flatten(results)
            if self.best_task is not None:
                self._keep_best(step, results[self.best_task], save_model)
        self.accelerator.wait_for_everyone()
        return scores

    def _keep_best(self, step: int, row: dict[str, Any], save_model: Callable[[Path], Any]) -> None:
        if self.best_score not in row["scores"]:
            raise TrainConfigError(f"eval.best_metric={self.settings.best_metric!r}: task {self.best_task} has no "
                                   f"score {self.best_score!r} (its scores: {', '.join(row['scores'])})")
        value = row["scores"][self.best_score]
        if value is None:
            return
        if self.best is not None:
            better = value > self.best["score"] if self.settings.greater_is_better else value < self.best["score"]
            if not better:
                return
        self.best = {"step": step, "metric": self.settings.best_metric, "score": value}
        with io.atomic_directory(self.run_dir / BEST_DIR) as staging:
            save_model(staging)
            (staging / BEST_FILE).write_text(json.dumps(self.best, indent=2) + "\n")


def _refuse_sharded(accelerator: Any) -> None:
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    zero3 = kind == DistributedType.DEEPSPEED and getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    if kind == DistributedType.FSDP or zero3:
        raise TrainConfigError("eval: evaluation during training generates on one process, which a sharded model "
                               f"({kind}) cannot do; evaluate the saved checkpoints with `llavakit eval`")
