"""`llavakit ablate-anyres --out DIR`: the seeds' AnyRes ablation at micro scale.

Runs the quickstart twice on one world with one set of cached components: once with AnyRes (the
image split into up to 4x4 crops plus the squashed base) and once with a single squashed 1x1
crop, then prints every task's score side by side. The high-resolution detail task (a tiny
letter or object in a 256 px image) is the one AnyRes is for: squashed to 64 px its detail is
below two pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llavakit.utils.atomic import atomic_write_text

VARIANTS = {"anyres": "on", "single_crop": "off"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/ablate-anyres", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-limit", type=int, default=None)


def comparison_table(results: dict[str, dict]) -> str:
    """Markdown: task, chance, then one score column per variant, hires_detail first."""
    names = list(results)
    tasks = list(next(iter(results.values()))["eval"])
    tasks.sort(key=lambda task: task != "hires_detail")
    lines = ["| task | chance | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task in tasks:
        chance = results[names[0]]["eval"][task]["chance"]
        scores = " | ".join(f"{results[name]['eval'][task]['accuracy']:.3f}" for name in names)
        lines.append(f"| {task} | {chance:.3f} | {scores} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from llavakit.quickstart import run as quickstart

    out = Path(args.out).resolve()
    results = {}
    for name, anyres in VARIANTS.items():
        print(f"\n===== {name} (--anyres {anyres})")
        # the quickstart's own parser, so every other option keeps its default
        parser = argparse.ArgumentParser()
        quickstart.add_arguments(parser)
        flags = ["--out", str(out / name), "--scale", str(args.scale), "--seed", str(args.seed), "--anyres", anyres,
                 "--world", str(out / "world"), "--cache", str(out / "cache")]
        if args.eval_limit is not None:
            flags += ["--eval-limit", str(args.eval_limit)]
        quickstart.run(parser.parse_args(flags))
        results[name] = json.loads((out / name / "results.json").read_text())
    table = comparison_table(results)
    atomic_write_text(out / "ablation.md", "# AnyRes against a single 1x1 crop\n\n" + table + "\n")
    atomic_write_text(out / "ablation.json", json.dumps(
        {name: {"eval": r["eval"], "settings": r["settings"]} for name, r in results.items()}, indent=2) + "\n")
    print("\n" + table + f"\n\nwritten: {out / 'ablation.md'}")
    return 0
