"""Score a recipe's model on the world's held-out splits, and the image-swap controls.

Each split is the world's eval tasks over its own files (``<split>/<task>.jsonl``): ``dev``, new
scenes, is where a recipe's choices are made; ``test`` is only reported; ``test_paraphrase`` asks
the first test scenes in a phrasing training never used. Each task's row carries the task's
``version``, so scores of different wordings or metrics are not compared as one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llavakit.evaluation.task_spec import TaskSpec, load_task
from llavakit.recipe.schema import Recipe
from llavakit.synth.world import DEV, EVAL_SPLITS, PARAPHRASE, TEST
from llavakit.utils.device import default_device

# results.json key of each split's scores ("eval" is the test split, as it always was)
RESULT_KEYS = {TEST: "eval", DEV: "eval_dev", PARAPHRASE: "eval_paraphrase"}
assert set(RESULT_KEYS) == set(EVAL_SPLITS)
ROW_KEYS = ("accuracy", "chance", "n", "version")


def split_task(task: str, split: str) -> TaskSpec:
    """The world's task ``synth_<task>`` over the files of ``split``."""
    return load_task(f"synth_{task}").for_split(split)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    out = {key: row[key] for key in ROW_KEYS}
    if by_category := row["details"].get("by_category"):
        out["by_category"] = {name: {"accuracy": part["accuracy"], "n": part["n"]}
                              for name, part in by_category.items()}
    return out


def _rows(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name.removeprefix("synth_"): _row(row) for name, row in rows.items()}


def evaluation_model(recipe: Recipe, model: Path) -> Any:
    """What the evaluation asks: the saved model's folder, or the model loaded with the recipe's
    evaluation-only visual settings (``evaluation.visual``) applied."""
    if not recipe.evaluation.visual:
        return model
    import torch

    from llavakit.api import load

    llava = load(model, dtype=torch.float32, device=default_device())
    llava.set_visual(**recipe.evaluation.visual)
    print(f"evaluation visual settings: {recipe.evaluation.visual}")
    return llava


def evaluate_splits(recipe: Recipe, model: Any, world: Path, out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"eval": {task: row}, "eval_dev": ..., "eval_paraphrase": ...}``, each row ``accuracy``,
    ``chance``, ``n`` and ``version`` (and ``by_category``, each category's ``accuracy`` and ``n``,
    for the tasks that break their score down: the multi-image tasks by image placement); a split
    the recipe does not ask is an empty mapping. ``model``: a folder or a loaded `Llava`."""
    from llavakit.evaluation.runner import evaluate

    results: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in RESULT_KEYS.values()}
    for split in recipe.evaluation.splits:
        print(f"\n== evaluation: {split} split")
        rows = evaluate(model, [split_task(task, split) for task in recipe.evaluation.tasks], out / "eval" / split,
                        data_root=world, limit=recipe.evaluation.limit, batch_size=recipe.evaluation.batch_size)
        results[RESULT_KEYS[split]] = _rows(rows)
    return results


def control_split(recipe: Recipe) -> str:
    """The split the controls ask: test, or dev when the recipe scores dev and not test (a run that
    is choosing leaves the test split alone)."""
    splits = recipe.evaluation.splits
    return DEV if DEV in splits and TEST not in splits else TEST


def run_controls(recipe: Recipe, model: Any, world: Path, out: Path) -> dict[str, dict[str, Any]]:
    """The control tasks again, each image swapped for another sample's: chance if the model looks."""
    from llavakit.evaluation.runner import evaluate
    from llavakit.quickstart.controls import shuffled_images_task

    if not recipe.evaluation.controls:
        return {}
    specs = [shuffled_images_task(world, task, control_split(recipe)) for task in recipe.evaluation.controls]
    rows = evaluate(model, [str(s) for s in specs], out / "eval-controls", data_root=world,
                    limit=recipe.evaluation.limit, batch_size=recipe.evaluation.batch_size, progress=False)
    controls = _rows(rows)
    for name, row in controls.items():
        print(f"control {name:<17} accuracy {row['accuracy']:.3f} (chance {row['chance']:.3f}): images swapped")
    return controls


def score_table(results: dict[str, Any], markdown: bool = False) -> str:
    """One row per task: its version, the test split's chance, and the score of each split asked."""
    splits = [split for split in (DEV, TEST, PARAPHRASE) if results[RESULT_KEYS[split]]]
    tasks = list(dict.fromkeys(task for split in splits for task in results[RESULT_KEYS[split]]))

    def cell(split: str, task: str) -> str:
        row = results[RESULT_KEYS[split]].get(task)
        return f"{row['accuracy']:.3f}" if row else "-"

    def info(task: str, key: str) -> Any:
        preferred = sorted(splits, key=lambda split: split != TEST)  # the test split's chance if it is there
        return next(results[RESULT_KEYS[s]][task][key] for s in preferred if task in results[RESULT_KEYS[s]])

    sizes = {split: next(iter(results[RESULT_KEYS[split]].values()))["n"] for split in splits}
    headers = ["task", "version", "chance", *[f"{split} (n={sizes[split]})" for split in splits]]
    rows = [[task, str(info(task, "version")), f"{info(task, 'chance'):.3f}", *[cell(s, task) for s in splits]]
            for task in tasks]
    if markdown:
        return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                          *["| " + " | ".join(row) + " |" for row in rows]])
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip()
                     for line in [headers, *rows])
