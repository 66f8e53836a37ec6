"""An ablation file: a recipe and named arms, each a set of ``--set`` overrides, run one after the
other on one world and one component cache, then every task's score side by side.

    title: AnyRes against a single 1x1 crop
    recipe: ../quickstart.yaml        # relative to this file, or a shipped recipe's name
    first_tasks: [hires_detail]       # table order: these first
    arms:
      anyres: {}
      single_crop: {model.visual.image_mode: squash, model.visual.image_newline: image}

Every arm is loaded and checked before the first one runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llavakit.recipe.load import find_recipe, load_recipe, read_yaml
from llavakit.recipe.overrides import as_set_flags
from llavakit.recipe.schema import Recipe, RecipeError
from llavakit.utils.atomic import atomic_write_text


class Ablation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    recipe: str
    first_tasks: list[str] = []
    arms: dict[str, dict[str, Any]] = Field(min_length=1)


def load_ablation(path: str | Path) -> tuple[Ablation, Path]:
    """The ablation and the path of its recipe."""
    path = find_recipe(path)
    try:
        ablation = Ablation.model_validate(read_yaml(path))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"{path}: invalid ablation: {problems}") from None
    local = path.parent / ablation.recipe
    return ablation, local if local.is_file() else find_recipe(ablation.recipe)


def arm_flags(ablation: Ablation, out: Path, overrides: list[str]) -> dict[str, list[str]]:
    """Each arm's ``--set`` flags: one world and one cache for all, then the caller's, then the arm's."""
    shared = [f"world.dir={out / 'world'}", f"components.cache={out / 'cache'}"]
    return {name: shared + list(overrides) + as_set_flags(arm) for name, arm in ablation.arms.items()}


def comparison_table(results: dict[str, dict], first: list[str] = ()) -> str:
    """Markdown: task, chance, then one score column per arm; the ``first`` tasks lead."""
    names = list(results)
    tasks = list(next(iter(results.values()))["eval"])
    tasks.sort(key=lambda task: task not in first)
    lines = ["| task | chance | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task in tasks:
        chance = results[names[0]]["eval"][task]["chance"]
        scores = " | ".join(f"{results[name]['eval'][task]['accuracy']:.3f}" for name in names)
        lines.append(f"| {task} | {chance:.3f} | {scores} |")
    return "\n".join(lines)


def run_ablation(path: str | Path, out: str | Path, overrides: list[str] = ()) -> dict[str, dict]:
    from llavakit.recipe.runner import run_recipe

    ablation, recipe_path = load_ablation(path)
    out = Path(out).resolve()
    flags = arm_flags(ablation, out, list(overrides))
    recipes: dict[str, Recipe] = {name: load_recipe(recipe_path, arm) for name, arm in flags.items()}
    results = {}
    for name, recipe in recipes.items():
        print(f"\n===== {name}: {' '.join(as_set_flags(ablation.arms[name])) or 'the recipe as written'}")
        results[name] = run_recipe(recipe, out / name, str(recipe_path), flags[name])
    table = comparison_table(results, ablation.first_tasks)
    atomic_write_text(out / "ablation.md", f"# {ablation.title}\n\n" + table + "\n")
    atomic_write_text(out / "ablation.json", json.dumps(
        {name: {"eval": r["eval"], "settings": r["settings"]} for name, r in results.items()}, indent=2) + "\n")
    print("\n" + table + f"\n\nwritten: {out / 'ablation.md'}")
    return results
