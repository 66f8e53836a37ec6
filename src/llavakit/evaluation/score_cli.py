"""`llavakit score`: score a saved predictions JSONL with one or more registered metrics, no model.

    llavakit score --metric vqav2 --predictions preds.jsonl --out results.json
    llavakit score --list
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llavakit.evaluation.metrics import METRICS, MetricResult, RecordError
from llavakit.evaluation.predictions import PredictionsFormatError, read_predictions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", action="append", metavar="M", help="metric name (repeatable); see --list")
    parser.add_argument("--predictions", type=Path, metavar="FILE.jsonl", help="one JSON object per sample")
    parser.add_argument("--out", type=Path, metavar="results.json", help="write the results as JSON here")
    parser.add_argument("--no-per-sample", action="store_true", help="leave per-sample scores out of --out")
    parser.add_argument("--list", action="store_true", help="list the metrics and the fields they read")


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_result(result: MetricResult) -> str:
    """The headline scores as a two-column table, then counts and the per-category table if any."""
    lines = [f"{result.metric} (n={result.n})", _table([[k, _format(v)] for k, v in result.scores.items()])]
    for key in ("unparsed", "failed"):
        if key in result.details:
            lines.append(f"{key}: {result.details[key]}")
    by_category = result.details.get("by_category")
    if by_category:
        columns = list(next(iter(by_category.values())))
        rows = [["category", *columns]] + [[c, *(_format(v.get(k)) for k in columns)] for c, v in by_category.items()]
        lines.append(_table(rows))
    return "\n".join(lines)


def _list_metrics() -> str:
    return _table([[m.name, m.summary, "; ".join(m.fields)] for m in METRICS.values()])


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(_list_metrics())
        return 0
    if not args.metric or args.predictions is None:
        print("llavakit score: --metric and --predictions are required (or --list)", file=sys.stderr)
        return 2
    unknown = [m for m in args.metric if m not in METRICS]
    if unknown:
        print(f"llavakit score: unknown metric {', '.join(unknown)}; known: {', '.join(METRICS)}", file=sys.stderr)
        return 2
    try:
        predictions = read_predictions(args.predictions)
    except (OSError, PredictionsFormatError) as e:
        print(f"llavakit score: {e}", file=sys.stderr)
        return 2
    results = {}
    for name in args.metric:
        try:
            results[name] = METRICS[name].compute(predictions.records)
        except RecordError as e:
            line = predictions.lines[e.index]
            print(f"llavakit score: {args.predictions}:{line}: {name}: field {e.field!r}: {e.message}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"llavakit score: {args.predictions}: {name}: {e}", file=sys.stderr)
            return 2
    print("\n\n".join(format_result(r) for r in results.values()))
    if args.out is not None:
        payload = {
            "predictions": str(args.predictions),
            "results": {n: r.to_dict(per_sample=not args.no_per_sample) for n, r in results.items()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0
