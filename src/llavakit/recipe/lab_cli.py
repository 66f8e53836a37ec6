"""``llavakit lab ABLATION.yaml --out DIR``: run every arm x seed of an ablation file and write the
comparison (``DIR/lab.md``, ``DIR/lab.json``, ``DIR/lab.png``).

    llavakit lab ablations/anyres --out runs/anyres --seeds 3 --jobs 2
    llavakit lab ablations/anyres --check                  # load and check every run, run nothing
    llavakit lab ablations/anyres --out runs/anyres --report-only   # the tables from the finished runs

``llavakit recipe ablate`` and ``llavakit ablate-anyres`` are this command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llavakit.recipe.cli import add_set_argument, refusing

DEFAULT_OUT = "runs/lab"


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    """Everything but the ablation file and --out (the aliases name those their own way)."""
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the ablation file's)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per usable core); "
                                                               "the cores' threads are divided among them")
    parser.add_argument("--check", action="store_true", help="load and check every run, print the plan, run nothing")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs only")
    parser.add_argument("--reuse", action="append", type=Path, default=[], metavar="LAB_OUT",
                        help="another lab's output folder: a run it finished that is the same run (the same "
                             "recipe as it ran, but for the shared folders) is copied, not run again (repeatable)")
    add_set_argument(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ablation", help="an ablation YAML, or a shipped one's name (ablations/anyres)")
    parser.add_argument("--out", default=None, help=f"output directory (required to run; --check: {DEFAULT_OUT})")
    add_lab_arguments(parser)


def print_plan(plan) -> None:
    from llavakit.recipe.lab import LOG_FILE

    ablation = plan.ablation
    print(f"lab {ablation.title!r}: recipe {plan.recipe_path}, {len(ablation.arms)} arms x "
          f"{len(plan.seeds)} seeds = {len(plan.runs)} runs, baseline {ablation.baseline}")
    if ablation.status:
        print(f"  status: {ablation.status}")
    for run in plan.runs:
        state = "finished" if run.finished else ("interrupted" if (run.dir / LOG_FILE).exists() else "to run")
        stages = ",".join(stage.name for stage in run.recipe.enabled_stages())
        recipe = f"  recipe {run.recipe_path.name}" if run.recipe_path != plan.recipe_path else ""
        print(f"  {run.name:<32} {state:<12} world {Path(run.recipe.world.dir).name}  stages {stages}{recipe}")
    print(f"  tasks: {', '.join(plan.tasks())}")


def run_lab_command(command: str, ablation: str, out: str | None, args: argparse.Namespace) -> int:
    """Plan (and unless --check, run) the lab; 2 when refused before anything runs, 1 when a run failed."""
    failed: list[str] = []

    def action() -> None:
        from llavakit.recipe.ablation import plan_lab
        from llavakit.recipe.lab import reuse_runs, run_lab
        from llavakit.recipe.lab_report import LAB_MD, write_report
        from llavakit.recipe.schema import RecipeError

        if out is None and not args.check:
            raise RecipeError("--out is required to run a lab (or give --check)")
        plan = plan_lab(ablation, out or DEFAULT_OUT, list(args.overrides), args.seeds)
        if args.check:
            print_plan(plan)
            return
        if not args.report_only:
            if args.reuse:
                reuse_runs(plan, args.reuse)
            failed.extend(run_lab(plan, args.jobs)["failed"])
        write_report(plan)
        print((plan.out / LAB_MD).read_text(encoding="utf-8"))
        print(f"written: {plan.out / LAB_MD}")

    code = refusing(command, action)
    if failed:
        print(f"llavakit {command}: {len(failed)} run(s) failed: {', '.join(failed)} "
              "(each folder's lab.log says why; rerun the lab to retry them)", file=sys.stderr)
        return 1
    return code


def run(args: argparse.Namespace) -> int:
    return run_lab_command("lab", args.ablation, args.out, args)
