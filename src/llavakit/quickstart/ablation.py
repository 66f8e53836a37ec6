"""`llavakit ablate-anyres --out DIR`: the shipped ablation ``recipes/ablations/anyres.yaml``
(the quickstart with AnyRes against one squashed 1x1 crop), run by the generic ablation runner,
as `llavakit recipe ablate ablations/anyres --out DIR` does."""

from __future__ import annotations

import argparse

from llavakit.quickstart.run import shorthand_overrides
from llavakit.recipe.cli import add_set_argument, refusing

ANYRES = "ablations/anyres"  # the shipped ablation's name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/ablate-anyres", help="output directory")
    parser.add_argument("--scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    add_set_argument(parser)


def run(args: argparse.Namespace) -> int:
    from llavakit.recipe.ablation import run_ablation

    return refusing("ablate-anyres", lambda: run_ablation(ANYRES, args.out, shorthand_overrides(args)))
