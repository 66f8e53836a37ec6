"""``llavakit recipe run|check|ablate``: run any recipe file, check one, or run an ablation of one.

    llavakit recipe run recipes/quickstart.yaml --out runs/q --set scale=0.5 --set stages.motion.enabled=false
    llavakit recipe check quickstart --set world.motion_drill=0      # validate and print the plan, run nothing
    llavakit recipe ablate ablations/anyres --out runs/anyres      # = llavakit lab (recipe/lab_cli.py)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a recipe key (repeatable; stages by name: stages.stage2.train.epochs=8)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_text in (("run", "run a recipe"), ("check", "validate a recipe and print its stages"),
                              ("ablate", "= llavakit lab: every arm x seed of an ablation file, compared")):
        command = sub.add_parser(action, help=help_text)
        command.add_argument("recipe", help="a recipe (or ablation) YAML, or a shipped one's name (quickstart)")
        if action == "ablate":
            from llavakit.recipe.lab_cli import add_lab_arguments

            command.add_argument("--out", default=None, help="output directory (required unless --check)")
            add_lab_arguments(command)
            continue
        if action != "check":
            command.add_argument("--out", required=True, help="output directory")
        add_set_argument(command)


def print_plan(recipe) -> None:
    from llavakit.recipe.plan import starts
    from llavakit.synth.datasets import dataset_sizes
    from llavakit.synth.world import split_size

    sizes = dataset_sizes(recipe.world_settings())
    print(f"recipe {recipe.name}: seed {recipe.seed}, scale {recipe.scale}")
    for stage in recipe.stages:
        if not stage.enabled:
            print(f"  {stage.name:<14} (disabled)")
            continue
        mixture = ", ".join(f"{m.dataset} {m.take} of {sizes[m.dataset]}" for m in stage.mixture)
        print(f"  {stage.name:<14} from {starts(recipe)[stage.name]:<14} {mixture}")
    world = recipe.world_settings()
    limit = recipe.evaluation.limit or float("inf")
    splits = ", ".join(f"{split} ({min(split_size(world, split), limit)} a task)" for split in recipe.evaluation.splits)
    print(f"  evaluation: {', '.join(recipe.evaluation.tasks)}; controls: {', '.join(recipe.evaluation.controls)}")
    print(f"  splits: {splits}")


def refusing(command: str, action: Callable[[], object]) -> int:
    """Run ``action``; a recipe refused before it runs is one line on stderr and exit status 2."""
    from llavakit.recipe.schema import RecipeError

    try:
        action()
    except RecipeError as err:
        print(f"llavakit {command}: refused: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "ablate":
        from llavakit.recipe.lab_cli import run_lab_command

        return run_lab_command("recipe ablate", args.recipe, args.out, args)
    return refusing("recipe", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from llavakit.recipe.load import find_recipe, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.action == "check":
        print_plan(recipe)
        return 0
    from llavakit.recipe.runner import run_recipe

    run_recipe(recipe, Path(args.out), str(find_recipe(args.recipe)), args.overrides)
    return 0
