"""A lab's table and chart from its finished runs: ``OUT/lab.json`` (every score and statistic),
``OUT/lab.md`` (the tables people read) and ``OUT/lab.png`` (per task, each arm's mean with its
standard deviation over seeds as an error bar)."""

from __future__ import annotations

import json
from pathlib import Path

from llavakit.recipe.ablation import RESULTS_FILE, LabPlan
from llavakit.recipe.overrides import as_set_flags
from llavakit.recipe.schema import RecipeError
from llavakit.recipe.stats import compare
from llavakit.utils.atomic import atomic_write_text

LAB_JSON, LAB_MD, LAB_PNG = "lab.json", "lab.md", "lab.png"


def collect(plan: LabPlan) -> tuple[dict, dict, dict]:
    """``scores[task][arm][seed]`` (accuracy), ``chance[task]`` and ``seconds[run name]`` from every
    finished run."""
    section = plan.ablation.section
    scores: dict = {task: {arm: {} for arm in plan.ablation.arms} for task in plan.tasks()}
    chance: dict = {}
    seconds: dict = {}
    for run in plan.runs:
        if not run.finished:
            continue
        results = json.loads((run.dir / RESULTS_FILE).read_text(encoding="utf-8"))
        if section not in results:
            raise RecipeError(f"{run.dir / RESULTS_FILE}: no section {section!r} "
                              f"(it has: {', '.join(k for k in results if k.startswith('eval'))})")
        for task in scores:
            row = score_row(results[section], task, f"{run.dir / RESULTS_FILE}: {section}")
            if row is not None:
                scores[task][run.arm][run.seed] = row["accuracy"]
                chance[task] = row["chance"]
        seconds[run.name] = results.get("seconds")
    return scores, chance, seconds


def score_row(section: dict, task: str, where: str) -> dict | None:
    """The ``accuracy`` and ``chance`` of ``task`` in a results section, or of one category of it
    (``multiview/front``: the task's ``by_category`` part, at the task's chance); None when the run
    did not score the task."""
    name, _, category = task.partition("/")
    row = section.get(name)
    if row is None or not category:
        return row
    parts = row.get("by_category", {})
    if category not in parts:
        raise RecipeError(f"{where}: task {name} has no category {category!r} "
                          f"(it has: {', '.join(parts) or 'none'})")
    return {"accuracy": parts[category]["accuracy"], "chance": row["chance"]}


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _mean_std(row: dict) -> str:
    if row["n"] == 0:
        return "not run"
    return _fmt(row["mean"]) + (f" ± {row['std']:.3f}" if row["std"] is not None else "")


def _minutes(seconds: dict) -> str:
    """How long the runs took, from their own clocks: what a rerun of one costs."""
    known = [value for value in seconds.values() if isinstance(value, (int, float))]
    if not known:
        return ""
    low, high = min(known) / 60, max(known) / 60
    return f" (a run took {low:.1f} to {high:.1f} minutes)" if len(known) > 1 else f" (in {low:.1f} minutes)"


def _diff_row(task: str, name: str, diff: dict, focus: list[str]) -> str:
    interval = "-" if diff["ci95"] is None else f"[{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
    mark = f"**{task}**" if task in focus else task
    return (f"| {mark} | {name} | {_fmt(diff['mean'], True)} | {_fmt(diff['std'])} | {interval} | "
            f"{diff['wins']} / {diff['ties']} / {diff['losses']} | {diff['verdict']} |")


def markdown(plan: LabPlan, table: dict, chance: dict, seconds: dict) -> str:
    ablation, arms = plan.ablation, list(plan.ablation.arms)
    baseline = ablation.baseline
    others = [arm for arm in arms if arm != baseline]
    finished = sum(run.finished for run in plan.runs)
    lines = [f"# {ablation.title}", ""]
    if ablation.claim:
        lines += [f"Claim: {ablation.claim}", ""]
    if ablation.status:
        lines += [f"**Status: {ablation.status}**", ""]
    for arm in ablation.arm_recipes:
        lines += [f"Arm **{arm}** trains from recipe `{plan.arm_recipe(arm)}`.", ""]
    lines += [f"Recipe `{plan.recipe_path}`, seeds {', '.join(map(str, plan.seeds))}; "
              f"{finished} of {len(plan.runs)} runs finished{_minutes(seconds)}. Scores: accuracy on the results' "
              f"`{ablation.section}` section. Baseline arm: **{baseline}**.", "",
              "## Scores (mean ± standard deviation over seeds)", "",
              "| task | chance | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for task in plan.tasks():
        mark = f"**{task}**" if task in ablation.tasks else task
        cells = " | ".join(_mean_std(table[task]["arms"][arm]) for arm in arms)
        lines.append(f"| {mark} | {_fmt(chance.get(task))} | {cells} |")
    if others:
        lines += ["", f"## Against {baseline} (paired by seed: arm minus baseline)", "",
                  "| task | arm | mean diff | std | 95% interval | wins / ties / losses | reading |",
                  "|---|---|---|---|---|---|---|"]
        for task in plan.tasks():
            for arm in others:
                lines.append(_diff_row(task, arm, table[task]["vs_baseline"][arm], ablation.tasks))
    if ablation.pairs:
        lines += ["", "## Other pairs (paired by seed: first minus second)", "",
                  "| task | pair | mean diff | std | 95% interval | wins / ties / losses | reading |",
                  "|---|---|---|---|---|---|---|"]
        for task in plan.tasks():
            for name, diff in table[task]["pairs"].items():
                lines.append(_diff_row(task, name, diff, ablation.tasks))
    lines += ["", "Bold tasks are the ones this ablation is about. The interval is a t-interval of the "
              "per-seed differences: with few seeds it is wide, and an interval containing 0 means the "
              "seeds do not settle the question.", "", "## Arms", ""]
    for arm, overrides in ablation.arms.items():
        flags = " ".join(f"`--set {flag}`" for flag in as_set_flags(overrides)) or "the recipe as written"
        lines.append(f"- **{arm}**: {flags}")
    reused = [run for run in plan.runs if run.reused_from]
    if reused:
        lines += ["", "Copied from another lab's finished run, the same run (`--reuse`): "
                  + ", ".join(f"{run.name} (`{run.reused_from}`)" for run in reused) + "."]
    lines += ["", f"![scores per task and arm]({LAB_PNG})", ""]
    return "\n".join(lines)


def bar_chart(plan: LabPlan, table: dict, chance: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks, arms = plan.tasks(), list(plan.ablation.arms)
    width = 0.8 / len(arms)
    x = np.arange(len(tasks))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(arms) / 2)), 4.0))
    for index, arm in enumerate(arms):
        rows = [table[task]["arms"][arm] for task in tasks]
        means = [row["mean"] if row["mean"] is not None else np.nan for row in rows]
        errors = [row["std"] or 0.0 for row in rows]
        axes.bar(x + (index - (len(arms) - 1) / 2) * width, means, width, yerr=errors, capsize=3, label=arm)
    for position, task in zip(x, tasks):
        if task in chance:
            axes.hlines(chance[task], position - 0.4, position + 0.4, colors="black", linestyles="dotted")
    axes.set_xticks(x, tasks, rotation=30, ha="right")
    axes.set_ylabel("accuracy (mean ± std over seeds)")
    axes.set_ylim(0, 1.05)
    axes.set_title(plan.ablation.title + "  (dotted: chance)", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    partial.replace(path)


def write_report(plan: LabPlan) -> dict:
    """Write lab.json, lab.md and lab.png under the lab's OUT from its finished runs; return lab.json's data."""
    scores, chance, seconds = collect(plan)
    table = compare(scores, plan.ablation.baseline, plan.ablation.pairs)
    data = {
        "title": plan.ablation.title, "claim": plan.ablation.claim, "status": plan.ablation.status,
        "ablation": str(plan.source), "recipe": str(plan.recipe_path), "section": plan.ablation.section,
        "baseline": plan.ablation.baseline, "seeds": plan.seeds, "focus_tasks": plan.ablation.tasks,
        "arms": plan.ablation.arms, "chance": chance,
        "runs": {run.name: {"dir": str(run.dir), "finished": run.finished, "seconds": seconds.get(run.name),
                            "recipe": str(run.recipe_path), "overrides": run.flags, "reused_from": run.reused_from}
                 for run in plan.runs},
        "tasks": table,
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.out / LAB_JSON, json.dumps(data, indent=2) + "\n")
    atomic_write_text(plan.out / LAB_MD, markdown(plan, table, chance, seconds))
    bar_chart(plan, table, chance, plan.out / LAB_PNG)
    return data
