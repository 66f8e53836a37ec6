"""``llavakit plan RECIPE``: what a real model's recipe costs, before any download or training.

    llavakit plan recipes/llava-next-7b.yaml                    # tables: parameters, tokens, FLOPs, memory
    llavakit plan llava-onevision-7b --stage stage2_ov --gpus 16 --gpu-memory 80 --json
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llavakit.recipe.cli import add_set_argument

    parser.add_argument("recipe", help="a real model's recipe YAML, or a shipped one's name (llava-next-7b)")
    parser.add_argument("--stage", help="plan this stage only (default: every stage that runs)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the stage runs on (default 8)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="text tokens of the planned sample (default: the recipe's media.text_tokens)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_set_argument(parser)


def run(args: argparse.Namespace) -> int:
    from llavakit.recipe.cli import refusing

    return refusing("plan", lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    from llavakit.recipe.model_recipe import load_model_recipe
    from llavakit.recipe.schema import RecipeError
    from llavakit.sizing.report import format_plan, plan_recipe

    if args.gpus < 1 or args.gpu_memory <= 0:
        raise RecipeError(f"--gpus {args.gpus} / --gpu-memory {args.gpu_memory}: both must be positive")
    recipe = load_model_recipe(args.recipe, args.overrides)
    plan = plan_recipe(recipe, args.stage, args.gpus, args.gpu_memory, args.text_tokens)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
