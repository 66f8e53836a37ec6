"""The evaluation runner: a model, a list of tasks, an output folder -> predictions and scores.

    from llavakit.evaluation.runner import evaluate
    results = evaluate("runs/model", ["synth_color", "synth_count"], "runs/eval", data_root="world")
    results["synth_color"]  # {"metric": "accuracy", "score": 0.93, "accuracy": 0.93, "chance": 0.15, "n": 100, ...}

Output folder::

    run.json                       # model and task fingerprints; resuming with other ones is refused
    predictions/<task>.jsonl       # one line per sample (appended per batch, fsynced; see store.py)
    reviews/<task>.jsonl           # judge replies, for judged tasks
    results/<task>.json            # one task's scores, written atomically
    results.json                   # every finished task of the folder, written atomically

Each process does the samples of its shard in batches of similar prompt length, skipping ids already
predicted; the process that finds a task complete merges, judges (if the task has a judge), scores.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError
from llavakit.evaluation.judge_client import JudgeClient, JudgeSettings
from llavakit.evaluation.judging import judge_records
from llavakit.evaluation.metrics import MetricResult, RecordError, score
from llavakit.evaluation.samples import PLACEHOLDERS, EvalSample, load_samples
from llavakit.evaluation.store import PredictionStore, Shard, atomic_write_json
from llavakit.evaluation.task_spec import TaskSpec, load_task
from llavakit.utils.device import default_device

IN_MEMORY = "<in memory>"


class RunMismatchError(LlavakitError):
    """The output folder holds predictions made with another model or another task definition."""


class _Model:
    """The model, loaded on first use: a run whose predictions are all there never loads it."""

    def __init__(self, model: Any, device: str | None, dtype: Any, progress: bool) -> None:
        self._model = model if not isinstance(model, (str, Path)) else None
        self.path = None if self._model is not None else Path(model)
        self.name = IN_MEMORY if self.path is None else str(self.path.resolve())
        self.device, self.dtype, self.progress = device, dtype, progress

    def get(self) -> Any:
        if self._model is None:
            import torch

            from llavakit.api import load

            device = self.device or default_device()
            if self.progress:
                print(f"loading {self.path} on {device}", file=sys.stderr)
            self._model = load(self.path, dtype=self.dtype or torch.float32, device=device)
        return self._model


# ----------------------------------------------------------------------------- batches


def plan_batches(samples: Sequence[EvalSample], tokenizer: Any, batch_size: int) -> list[list[EvalSample]]:
    """Batches of similar prompts: sorted by (images, videos, text tokens, index), then cut. The plan
    depends only on the samples, so a resumed run batches exactly as an uninterrupted one."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    texts = [s.prompt.replace(PLACEHOLDERS[0], "").replace(PLACEHOLDERS[1], "") for s in samples]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def key(pair: tuple[EvalSample, int]) -> tuple:
        sample, length = pair
        kinds = [kind for kind, _ in sample.media]
        return kinds.count("image"), kinds.count("video"), length, sample.index

    ordered = [s for s, _ in sorted(zip(samples, lengths), key=key)]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def generation_kwargs(spec: TaskSpec) -> dict[str, Any]:
    g = spec.generation
    return {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
            "repetition_penalty": g.repetition_penalty, "seed": g.seed, "stop": list(g.stop) or None}


def prediction_line(sample: EvalSample, generation: Any) -> dict[str, Any]:
    return {"id": sample.id, "prediction": generation.text, **sample.fields, "prompt": sample.prompt,
            "prompt_tokens": generation.prompt_tokens, "finish_reason": generation.finish_reason}


def predict(spec: TaskSpec, samples: Sequence[EvalSample], store: PredictionStore, model: _Model,
            batch_size: int, progress: bool) -> None:
    """Generate the samples that no predictions file has yet, appending one batch at a time."""
    from tqdm.auto import tqdm

    done = store.read()
    todo = [s for s in samples if s.key not in done]
    if not todo:
        return
    llava = model.get()
    kwargs = generation_kwargs(spec)
    with tqdm(total=len(samples), initial=len(samples) - len(todo), desc=spec.name, unit="sample",
              disable=not progress, dynamic_ncols=True) as bar:
        for batch in plan_batches(samples, llava.tokenizer, batch_size):
            pending = [s for s in batch if s.key not in done]
            if not pending:
                continue
            try:
                generations = llava.generate([s.messages() for s in pending], **kwargs)
            except LlavakitError as err:  # a bad image or placeholder: name the samples, not batch positions
                ids = ", ".join(repr(s.id) for s in pending)
                raise LlavakitError(f"task {spec.name} ({spec.source}): samples {ids}: {err}") from err
            store.append([prediction_line(s, g) for s, g in zip(pending, generations)])
            bar.update(len(pending))


# ----------------------------------------------------------------------------- scoring


def _chance(spec: TaskSpec, samples: Sequence[EvalSample]) -> float | None:
    if spec.chance is not None:
        return spec.chance
    values = [s.chance for s in samples if s.chance is not None]
    return math.fsum(values) / len(values) if values else None


def task_row(spec: TaskSpec, result: MetricResult, samples: Sequence[EvalSample]) -> dict[str, Any]:
    """What a task reports: ``metric``, ``score`` and the same number under its own name
    (``accuracy``, ``anls``...), ``chance``, ``n``, the task's ``version``, then every score and the details."""
    headline = spec.score or next(iter(result.scores))
    if headline not in result.scores:
        raise LlavakitError(f"task {spec.name} ({spec.source}): score {headline!r} is not a score of metric "
                            f"{spec.metric} ({', '.join(result.scores)})")
    value = result.scores[headline]
    return {"metric": spec.metric, "score_name": headline, "score": value, headline: value,
            "chance": _chance(spec, samples), "n": result.n, "version": spec.version,
            "scores": result.scores, "details": result.details, "task_file": spec.source,
            "predictions": str(Path("predictions") / f"{spec.name}.jsonl")}


def _judged(spec: TaskSpec, records: list[dict], judge: JudgeClient | None, out: Path,
            progress: bool) -> tuple[list[dict], dict[str, Any]]:
    reviews, stats = judge_records(records, spec.judge, judge, out / "reviews" / f"{spec.name}.jsonl",
                                   progress, desc=f"{spec.name} judge")
    judged = []
    for record in records:
        review = reviews[str(record["id"])]
        line = {**record, "review": review.get("review") or ""}
        line.pop("judge_error", None)
        if review.get("error"):
            line["judge_error"] = review["error"]
        judged.append(line)
    summary = {"model": judge.settings.model, "requests": stats.requested, "attempts": stats.attempts,
               "failed_requests": stats.failed}
    return judged, summary


def finish_task(spec: TaskSpec, samples: Sequence[EvalSample], store: PredictionStore, out: Path,
                judge: JudgeClient | None, progress: bool) -> dict[str, Any] | None:
    """Merge, judge and score the task if every sample has a prediction; None while shards are missing."""
    done = store.read()
    if any(s.key not in done for s in samples):
        return None
    records = [done[s.key] for s in samples]
    judge_summary = None
    if spec.judge is not None:
        records, judge_summary = _judged(spec, records, judge, out, progress)
    try:
        result = score(spec.metric, records)
    except RecordError as err:
        raise LlavakitError(f"task {spec.name} ({spec.source}): sample {records[err.index]['id']!r}: "
                            f"metric {spec.metric}: field {err.field!r}: {err.message}") from None
    per_sample = {str(p["id"]): p["score"] for p in result.per_sample}
    store.write_merged([{**r, "score": per_sample.get(str(r["id"]))} for r in records])
    row = task_row(spec, result, samples)
    if judge_summary is not None:
        row["details"] = {**row["details"], "judge": judge_summary}
    atomic_write_json(out / "results" / f"{spec.name}.json", row)
    return row


# ----------------------------------------------------------------------------- the run


def _check_run(out: Path, model_name: str, specs: Sequence[TaskSpec]) -> None:
    """Refuse to mix predictions of another model or task definition into this folder; record ours."""
    path = out / "run.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    tasks = info.get("tasks", {})

    def has_predictions(name: str) -> bool:
        return any((out / "predictions").glob(f"{name}.*jsonl"))

    old_model = info.get("model")
    other_model = IN_MEMORY not in (old_model, model_name) and old_model not in (None, model_name)
    if other_model and any(has_predictions(name) for name in tasks):
        raise RunMismatchError(f"{out} holds predictions of model {old_model}, not {model_name}: "
                                   f"use another output folder")
    for spec in specs:
        old = tasks.get(spec.name, {}).get("fingerprint")
        if old not in (None, spec.fingerprint()) and has_predictions(spec.name):
            raise RunMismatchError(f"{out}: task {spec.name} was predicted with another definition than "
                                   f"{spec.source} (prompt, generation, fields or metric changed); use another "
                                   f"output folder or delete {out / 'predictions'}/{spec.name}.*")
        tasks[spec.name] = {"fingerprint": spec.fingerprint(), "task_file": spec.source}
    keep = model_name == IN_MEMORY and old_model is not None  # a Llava object does not say where it came from
    atomic_write_json(path, {"model": old_model if keep else model_name, "tasks": tasks})


def _judge_client(specs: Sequence[TaskSpec], judge: JudgeSettings | None) -> JudgeClient | None:
    judged = [s.name for s in specs if s.judge is not None]
    if not judged:
        return None
    if judge is None:
        try:
            judge = JudgeSettings.resolve()
        except LlavakitError as err:
            raise type(err)(f"task {', '.join(judged)} is scored by an LLM judge: {err}") from None
    return JudgeClient(judge)


def write_results(out: Path, model_name: str) -> dict[str, Any]:
    """``results.json`` from every ``results/<task>.json`` of the folder (atomic)."""
    tasks = {}
    for path in sorted((out / "results").glob("*.json")):
        tasks[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    payload = {"model": model_name, "tasks": tasks}
    atomic_write_json(out / "results.json", payload)
    return payload


def evaluate(
    model: Any,
    tasks: Sequence[str | Path | TaskSpec],
    out_dir: str | Path,
    data_root: str | Path | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    judge: JudgeSettings | None = None,
    device: str | None = None,
    dtype: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` (a `Llava` or a checkpoint path) on ``tasks`` (built-in names, YAML paths or
    `TaskSpec`s), writing to ``out_dir``; resumes whatever an earlier run there left.

    Returns ``{task: row}`` for each task that is complete (all of them unless other shards are still
    running), each row with ``metric``, ``score``, the score under its own name (``accuracy`` for the
    synthetic tasks), ``chance``, ``n``, ``scores`` and ``details``.
    """
    specs = [load_task(t) for t in tasks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise LlavakitError(f"a task is listed twice: {', '.join(names)}")
    shard = shard or Shard.from_env()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge_client = _judge_client(specs, judge)
    source = _Model(model, device, dtype, progress)
    all_samples = {spec.name: load_samples(spec, data_root, limit) for spec in specs}  # data errors before work
    _check_run(out, source.name, specs)
    results = {}
    for spec in specs:
        samples = all_samples[spec.name]
        store = PredictionStore(out / "predictions", spec.name, shard)
        predict(spec, [s for s in samples if shard.owns(s.index)], store, source, batch_size, progress)
        row = finish_task(spec, samples, store, out, judge_client, progress)
        if row is not None:
            results[spec.name] = row
    write_results(out, source.name)
    return results
