"""`llavakit plot RUN_DIR [RUN_DIR ...]`: loss and learning-rate curves from metrics.jsonl to PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from llavakit.train.telemetry import read_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output folder (default: the first run directory)")


def plot_runs(runs: list[Path], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    histories = {run.name: read_metrics(run / "metrics.jsonl") for run in runs}
    written = []
    for name, keys, ylabel in (("loss.png", ["loss"], "loss"), ("lr.png", None, "learning rate")):
        figure, axis = plt.subplots(figsize=(7, 4))
        for run, records in histories.items():
            steps = [r["step"] for r in records]
            series = keys or sorted({k for r in records for k in r if k.startswith("lr/")})
            for key in series:
                label = run if len(series) == 1 else f"{run} {key}"
                axis.plot(steps, [r.get(key) for r in records], label=label)
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        if ylabel == "learning rate":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
        written.append(out / name)
    return written


def run(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    missing = [str(r) for r in runs if not (r / "metrics.jsonl").is_file()]
    if missing:
        raise SystemExit(f"no metrics.jsonl in: {', '.join(missing)}")
    for path in plot_runs(runs, Path(args.out) if args.out else runs[0]):
        print(f"wrote {path}")
    return 0
