"""`llavakit quickstart --out DIR`: the shipped recipe ``recipes/quickstart.yaml``, run by the
generic recipe runner (`llavakit recipe run quickstart --out DIR` does the same).

The flags are shorthands for the recipe's top-level keys (``--scale 2`` is ``--set scale=2``);
any other change is a ``--set`` (docs/recipes.md).
"""

from __future__ import annotations

import argparse

from llavakit.recipe.cli import add_set_argument, refusing
from llavakit.recipe.overrides import as_set_flags

QUICKSTART = "quickstart"  # the shipped recipe's name

# flag -> the recipe key it sets
SHORTHANDS = {"scale": "scale", "seed": "seed", "world": "world.dir", "cache": "components.cache",
              "eval_limit": "evaluation.limit"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="output directory")
    parser.add_argument("--scale", type=float, default=None,
                        help="more data, bigger components and longer training (use > 1 on a GPU)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--world", default=None, help="world directory (default: OUT/world, generated if missing)")
    parser.add_argument("--cache", default=None, help="component cache (default: OUT/cache)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate at most this many samples per task")
    add_set_argument(parser)


def shorthand_overrides(args: argparse.Namespace) -> list[str]:
    """The flags given, as ``--set`` overrides, before the explicit ones."""
    given = {key: getattr(args, flag) for flag, key in SHORTHANDS.items() if getattr(args, flag, None) is not None}
    return as_set_flags(given) + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from llavakit.recipe import find_recipe, load_recipe, run_recipe

    overrides = shorthand_overrides(args)
    return refusing("quickstart", lambda: run_recipe(load_recipe(QUICKSTART, overrides), args.out,
                                                     str(find_recipe(QUICKSTART)), overrides))
