"""Run any recipe: world -> components -> its stages in order -> evaluation -> report.

1. generate the synthetic world of ``world`` (``llavakit synth``) unless it is already there;
2. train the tiny vision encoder and language model of ``components`` (cached);
3. write every stage's `llavakit train` config (and mixture) to OUT/configs/, then train the
   stages in order, each from the parts or from an earlier stage's model;
4. copy the last stage's model to OUT/model (loadable, chat-able, servable);
5. evaluate the tasks on the world's held-out splits (dev, test, test_paraphrase) and the image-swap
   controls, print a table against chance;
6. write OUT/results.json, OUT/recipe.yaml (the recipe as it ran) and OUT/report.md with plots.

Nothing here knows one recipe from another: what runs is the recipe file's data.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from llavakit.recipe.evaluation import evaluate_splits, evaluation_model, run_controls, score_table
from llavakit.recipe.plan import CONFIGS_DIR, Parts, StagePlan, plan_stages
from llavakit.recipe.schema import Recipe
from llavakit.utils.atomic import atomic_write_text
from llavakit.utils.device import default_device

RECIPE_FILE = "recipe.yaml"  # under OUT: the recipe as it ran, overrides applied


def run_stage(plan: StagePlan, configs_dir: Path) -> dict[str, Any]:
    from llavakit.train.config import load_config
    from llavakit.train.loop import Trainer
    from llavakit.train.telemetry import read_metrics

    path = configs_dir / f"{plan.name}.yaml"
    # A recipe run rebuilds each stage it reaches, replacing what an earlier run left in its folder.
    atomic_write_text(path, yaml.safe_dump({**plan.config, "overwrite": True}, sort_keys=False))
    print(f"\n== {plan.name}: llavakit train {path}")
    started = time.perf_counter()
    summary = Trainer(load_config(path)).run()
    losses = [r["loss"] for r in read_metrics(Path(plan.config["output_dir"]) / "metrics.jsonl")]
    return {"name": plan.name, "steps": summary["steps"], "seconds": round(time.perf_counter() - started, 1),
            "first_loss": losses[0], "final_loss": losses[-1], "config": str(path)}


def write_report(out: Path, world: Path, results: dict[str, Any]) -> Path:
    from llavakit.train.plot import plot_runs

    plot_runs([out / stage["name"] for stage in results["stages"]], out / "figures")
    lines = [
        f"# llavakit {results['recipe']['name']} report", "",
        f"Total time: {results['seconds']:.0f} s on {results['device']}.", "",
        "## Held-out evaluation", "",
        "Accuracy per split: `dev` (new scenes) is where a recipe's choices are made; `test` is only "
        "reported; `test_paraphrase` asks test scenes in a wording training never used. Chance is the "
        "test split's (dev's when test is not scored). A task's version changes with its questions' "
        "wording or its metric: compare scores of one version only.", "",
        score_table(results, markdown=True), "",
        "Controls (the test split's questions, or dev's when test is not scored, each image swapped for "
        "another sample's; chance if the model looks):", "",
        *[f"- {name}: {row['accuracy']:.3f} (chance {row['chance']:.3f})" for name, row in results["controls"].items()],
        "",
        "## Training", "",
        "| stage | steps | first loss | final loss | seconds |", "|---|---|---|---|---|",
    ]
    for stage in results["stages"]:
        lines.append(f"| {stage['name']} | {stage['steps']} | {stage['first_loss']:.3f} | {stage['final_loss']:.3f} | "
                     f"{stage['seconds']} |")
    lines += ["", "![loss](figures/loss.png)", "", "![learning rate](figures/lr.png)", "",
              "## Components", "", "```json", json.dumps(results["components"], indent=2), "```", "",
              f"The recipe as it ran: `{out / RECIPE_FILE}`.", "",
              f"Chat with the model: `llavakit chat --model {out / 'model'} --image {world}/images/...`", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def world_dir(recipe: Recipe, out: Path) -> Path:
    return Path(recipe.world.dir).resolve() if recipe.world.dir else out / "world"  # type: ignore[attr-defined]


def cache_dir(recipe: Recipe, out: Path) -> Path:
    return Path(recipe.components.cache).resolve() if recipe.components.cache else out / "cache"


def prepare_world(world: Path, recipe: Recipe) -> Path:
    """Generate the recipe's world into ``world`` unless it is there. One writer per folder: runs
    that share a world (a lab's arms) wait for the first one's instead of writing over it."""
    from llavakit import synth

    world.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(world.with_name(f".{world.name}.lock"))):
        return synth.generate_world(world, recipe.world_settings())


def run_recipe(recipe: Recipe, out: str | Path, source: str = "", overrides: list[str] = ()) -> dict[str, Any]:
    """Run a loaded (validated and checked) recipe into ``out``; return what results.json holds."""
    from llavakit.checkpoint.io import atomic_directory
    from llavakit.quickstart.components import prepare_components

    started = time.perf_counter()
    # Absolute paths: the stage configs written under OUT/configs resolve relative paths against
    # their own folder, as any `llavakit train` config does.
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe_data = recipe.model_dump(mode="json")
    atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(recipe_data, sort_keys=False))
    world = world_dir(recipe, out)
    print(f"== world: {world}")
    prepare_world(world, recipe)
    print("== components (tiny vision encoder and language model, cached)")
    components = prepare_components(world, cache_dir(recipe, out), recipe.component_settings())
    parts = Parts(components.vision_dir, components.llm_dir, components.vision_feature_layer)
    configs_dir = out / CONFIGS_DIR
    plans = plan_stages(recipe, out, world, parts)
    for plan in plans:  # every mixture first, so each stage's config can be rerun at once
        if plan.mixture is not None:
            atomic_write_text(configs_dir / plan.mixture_file, yaml.safe_dump(plan.mixture, sort_keys=False))
    stages = [run_stage(plan, configs_dir) for plan in plans]
    with atomic_directory(out / "model") as staging:
        for item in (out / plans[-1].name / "model").iterdir():
            shutil.copy2(item, staging / item.name)
    model = evaluation_model(recipe, out / "model")
    scores = evaluate_splits(recipe, model, world, out)
    print("\n" + score_table(scores))
    controls = run_controls(recipe, model, world, out)
    results = {
        **scores,
        "controls": controls,
        "stages": stages,
        "components": components.metrics,
        "seconds": round(time.perf_counter() - started, 1),
        "device": default_device(),
        "model": str(out / "model"),
        "settings": {"scale": recipe.scale, "seed": recipe.seed, "recipe": source, "overrides": list(overrides)},
        "recipe": recipe_data,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    report = write_report(out, world, results)
    print(f"\nresults: {out / 'results.json'}\nmodel:   {out / 'model'}\nreport:  {report}")
    print(f"total:   {results['seconds']:.0f} s")
    return results
