"""`llavakit eval`: evaluate a model on tasks, resumably; `llavakit eval compare`: runs side by side.

    llavakit eval --model runs/model --tasks synth_color,synth_count --data-root world --out runs/eval
    llavakit eval --model runs/model --tasks vqav2,pope --data-root data --out runs/eval --shard 0/2
    llavakit eval --model runs/model --tasks llava_bench --data-root data --out runs/eval \\
        --judge-url http://127.0.0.1:8001/v1 --judge-model gpt-4o
    llavakit eval compare runs/a/eval runs/b/eval --plot compare.png
    llavakit eval --list
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "compare: llavakit eval compare RUN [RUN ...] [--names A,B] [--tasks T1,T2] [--plot FILE.png]"
    sub = parser.add_subparsers(dest="action", metavar="{compare}")
    compare = sub.add_parser("compare", help="print a side-by-side table of runs and draw a bar chart")
    compare.add_argument("runs", nargs="+", help="output folders of `llavakit eval` (or their results.json)")
    compare.add_argument("--names", help="comma-separated run names (default: the folder names)")
    compare.add_argument("--tasks", help="comma-separated tasks to show, in this order (default: all)")
    compare.add_argument("--plot", default="comparison.png", help="bar chart PNG (default: comparison.png; "
                                                                  "'' for none)")

    parser.add_argument("--model", help="llavakit or transformers llava / llava_next / llava_onevision checkpoint")
    parser.add_argument("--tasks", help="comma-separated built-in task names or task YAML files")
    parser.add_argument("--out", type=Path, help="output folder (resumed if it holds an earlier run)")
    parser.add_argument("--data-root", type=Path, help="the folder task data_dirs are relative to (for the "
                                                       "synth_* tasks: the synthetic world)")
    parser.add_argument("--split", help="for tasks that name held-out splits (the synth_* tasks: dev, test, "
                                        "test_paraphrase), the one to read (default: each task's own file; synth: test)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N samples of each task")
    parser.add_argument("--shard", help="i/N: this process does samples with index %% N == i (default: torchrun's "
                                        "RANK/WORLD_SIZE, else all)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list the built-in tasks")
    judge = parser.add_argument_group("LLM judge (tasks scored by a judge, such as llava_bench)")
    judge.add_argument("--judge-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1 "
                                           "(default: $LLAVAKIT_JUDGE_URL, then $OPENAI_BASE_URL)")
    judge.add_argument("--judge-model", help="model name to send (default: $LLAVAKIT_JUDGE_MODEL)")
    judge.add_argument("--judge-key", help="API key (default: $LLAVAKIT_JUDGE_API_KEY, then $OPENAI_API_KEY)")
    judge.add_argument("--judge-retries", type=int, default=5, help="retries per request (back-off doubles)")
    judge.add_argument("--judge-backoff", type=float, default=1.0, help="seconds before the first retry")
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")
    judge.add_argument("--judge-workers", type=int, default=4, help="requests in flight at once")


def format_results(results: dict) -> str:
    rows = [["task", "metric", "score", "chance", "n"]]
    for task, row in results.items():
        metric = row["metric"] if row["score_name"] == row["metric"] else f"{row['metric']}/{row['score_name']}"
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        chance = "-" if row["chance"] is None else f"{row['chance']:.4f}"
        rows.append([task, metric, score, chance, str(row["n"])])
        failed = row["details"].get("failed") or row["details"].get("unparsed")
        if failed:
            rows[-1][-1] += f" ({failed} {'failed' if 'failed' in row['details'] else 'unparsed'})"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _list_tasks() -> str:
    from llavakit.evaluation.task_spec import builtin_task_names, load_task

    specs = [load_task(name) for name in builtin_task_names()]
    width = max(len(s.name) for s in specs)
    return "\n".join(f"{s.name.ljust(width)}  {s.metric:<16}  {s.description}" for s in specs)


def _compare(args: argparse.Namespace) -> int:
    from llavakit.evaluation.compare import format_table, load_runs, plot_comparison, task_names

    runs = load_runs(args.runs, args.names.split(",") if args.names else None)
    tasks = task_names(runs, args.tasks.split(",") if args.tasks else None)
    print(format_table(runs, tasks))
    if args.plot:
        print(f"\nwrote {plot_comparison(runs, tasks, args.plot)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from llavakit.evaluation.judge_client import JudgeSettings
    from llavakit.evaluation.runner import evaluate
    from llavakit.evaluation.store import Shard
    from llavakit.evaluation.task_spec import load_task

    missing = [flag for flag, value in (("--model", args.model), ("--tasks", args.tasks), ("--out", args.out))
               if not value]
    if missing:
        print(f"llavakit eval: {', '.join(missing)} required (or `llavakit eval compare ...`, `--list`)",
              file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [load_task(t.strip(), split=args.split) for t in args.tasks.split(",") if t.strip()]
    for task in tasks:
        if args.split is not None and not task.data.splits:
            print(f"llavakit eval: task {task.name} names no splits; --split {args.split} does not apply to it, "
                  f"its one file ({task.data.file or task.data.hf.dataset}) is read", file=sys.stderr)
    judge = None
    if any(t.judge is not None for t in tasks):
        judge = JudgeSettings.resolve(args.judge_url, args.judge_model, args.judge_key, max_retries=args.judge_retries,
                                      backoff=args.judge_backoff, timeout=args.judge_timeout,
                                      workers=args.judge_workers)
    shard = Shard.parse(args.shard) if args.shard else None
    results = evaluate(args.model, tasks, args.out, data_root=args.data_root, batch_size=args.batch_size,
                       limit=args.limit, progress=not args.no_progress, shard=shard, judge=judge,
                       device=args.device, dtype=getattr(torch, args.dtype))
    if results:
        print(format_results(results))
    waiting = [t.name for t in tasks if t.name not in results]
    if waiting:
        print(f"waiting for other shards: {', '.join(waiting)} (the last process to finish scores them)")
    print(f"\nresults: {args.out / 'results.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from llavakit.errors import LlavakitError

    try:
        if args.action == "compare":
            return _compare(args)
        if args.list:
            print(_list_tasks())
            return 0
        return _evaluate(args)
    except (LlavakitError, ValueError, OSError) as err:
        print(f"llavakit eval: {err}", file=sys.stderr)
        return 2
