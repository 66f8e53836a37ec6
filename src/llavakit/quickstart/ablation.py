"""`llavakit ablate-anyres --out DIR`: the shipped ablation ``recipes/ablations/anyres.yaml``
(AnyRes against one squashed 1x1 crop), run by the lab as `llavakit lab ablations/anyres --out DIR`
does."""

from __future__ import annotations

import argparse

from llavakit.recipe.overrides import as_set_flags

ANYRES = "ablations/anyres"  # the shipped ablation's name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llavakit.recipe.lab_cli import add_lab_arguments

    parser.add_argument("--out", default="runs/ablate-anyres", help="output directory")
    parser.add_argument("--scale", type=float, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    add_lab_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from llavakit.recipe.lab_cli import run_lab_command

    shorthands = {key: value for key, value in (("scale", args.scale), ("evaluation.limit", args.eval_limit))
                  if value is not None}
    args.overrides = as_set_flags(shorthands) + list(args.overrides)
    return run_lab_command("ablate-anyres", ANYRES, args.out, args)
