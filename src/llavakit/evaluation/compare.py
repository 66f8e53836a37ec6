"""`llavakit eval compare RUN1 RUN2 ...`: evaluation runs side by side, as a table and a bar chart.

A run is an output folder of `llavakit eval` (or its results.json). Rows are tasks, columns the runs'
headline scores, with the chance level when the task has one; the best score of a row is starred.
A task the runs scored at different versions (another wording or metric, docs/evaluation.md) is
marked and gets no star: its scores are not comparable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    tasks: dict[str, dict[str, Any]]


def load_run(path: str | Path, name: str | None = None) -> Run:
    """A run folder (its results.json) or a results.json file."""
    path = Path(path)
    results = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlavakitError(f"{path}: no results.json (is it an output folder of `llavakit eval`?)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise LlavakitError(f"{results}: cannot read ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise LlavakitError(f"{results}: not a results file of `llavakit eval` (no 'tasks' mapping)")
    default = path.name if path.is_dir() else path.parent.name
    return Run(name or default or str(path), path, data["tasks"])


def load_runs(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[Run]:
    if names and len(names) != len(paths):
        raise LlavakitError(f"{len(names)} names for {len(paths)} runs")
    runs = [load_run(p, names[i] if names else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    unique = []
    for run in runs:  # two folders called "eval" in different places: eval, eval#2
        seen[run.name] = seen.get(run.name, 0) + 1
        unique.append(run if seen[run.name] == 1 else Run(f"{run.name}#{seen[run.name]}", run.path, run.tasks))
    return unique


def task_names(runs: Sequence[Run], only: Sequence[str] | None = None) -> list[str]:
    """The tasks in first-seen order (or ``only``, in its order)."""
    if only:
        return list(only)
    names: list[str] = []
    for run in runs:
        names += [t for t in run.tasks if t not in names]
    return names


def _score(run: Run, task: str) -> float | None:
    value = run.tasks.get(task, {}).get("score")
    return float(value) if isinstance(value, (int, float)) else None


def _chance(runs: Sequence[Run], task: str) -> float | None:
    for run in runs:
        value = run.tasks.get(task, {}).get("chance")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _metric(runs: Sequence[Run], task: str) -> str:
    """``metric/score`` (``pope/f1``), or just the metric when the score has its name (``accuracy``)."""
    for run in runs:
        row = run.tasks.get(task)
        if row:
            metric, name = row.get("metric", "?"), row.get("score_name", "score")
            return metric if name == metric else f"{metric}/{name}"
    return "-"


def versions(runs: Sequence[Run], task: str) -> list:
    """The task's version in each run that scored it (None: a run from before tasks had versions)."""
    return [run.tasks[task].get("version") for run in runs if task in run.tasks]


def format_table(runs: Sequence[Run], tasks: Sequence[str]) -> str:
    header = ["task", "metric", "chance", *(r.name for r in runs)]
    rows = [header]
    mixed = []
    for task in tasks:
        scores = [_score(r, task) for r in runs]
        best = max((s for s in scores if s is not None), default=None)
        chance = _chance(runs, task)
        comparable = len(set(versions(runs, task))) <= 1
        star = comparable and sum(s is not None for s in scores) > 1  # best of several
        cells = [f"{s:.4f}{'*' if star and s == best else ''}" if s is not None else "-" for s in scores]
        rows.append([task if comparable else f"{task}!", _metric(runs, task),
                     "-" if chance is None else f"{chance:.4f}", *cells])
        if not comparable:
            mixed.append(f"{task} (versions {', '.join(str(v) for v in versions(runs, task))})")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    notes = [f"! scored at different task versions, not comparable: {'; '.join(mixed)}"] if mixed else []
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *notes])


def _panels(runs: Sequence[Run], tasks: Sequence[str]) -> list[list[str]]:
    """Fraction-valued tasks share one panel; a task on another scale (MME points, percents) gets its own."""
    fractions, others = [], []
    for task in tasks:
        values = [v for v in (*(_score(r, task) for r in runs), _chance(runs, task)) if v is not None]
        (fractions if all(0.0 <= v <= 1.0 for v in values) else others).append(task)
    return ([fractions] if fractions else []) + [[t] for t in others]


def plot_comparison(runs: Sequence[Run], tasks: Sequence[str], out: str | Path) -> Path:
    """Grouped bars, one group per task and one bar per run; chance as a dashed line over the group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(runs, tasks)
    widths = [max(2.0, 0.25 * len(runs) * len(p) + 1.0) for p in panels]
    figure, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.0, 4.5), squeeze=False,
                                gridspec_kw={"width_ratios": widths})
    bar = 0.8 / max(1, len(runs))
    chance_label = "chance"  # on the first chance line only
    for axis, panel in zip(axes[0], panels):
        for k, run in enumerate(runs):
            xs = [i + (k - (len(runs) - 1) / 2) * bar for i in range(len(panel))]
            values = [_score(run, t) for t in panel]
            axis.bar(xs, [v if v is not None else 0.0 for v in values], width=bar, label=run.name, color=f"C{k}")
        for i, task in enumerate(panel):
            chance = _chance(runs, task)
            if chance is not None:
                axis.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1,
                            label=chance_label, zorder=3)
                chance_label = None
        axis.set_xticks(range(len(panel)))
        axis.set_xticklabels(panel, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(_metric(runs, panel[0]) if len(panel) == 1 else "score")
        if len(panel) > 1 or all(0 <= (v or 0) <= 1 for v in (_score(r, panel[0]) for r in runs)):
            axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    handles, labels = [], []
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
