"""Benchmark: a training stage with its batches built in the training process or by workers (CPU).

Runs one `llavakit train` config (a stage of a recipe run: `OUT/configs/NAME.yaml`) for `--steps`
optimizer steps with `data.num_workers` 0 and each count of `--workers`, each as its own
`llavakit train` process, alternated repeat by repeat so a drift in the machine's speed falls on
both. Reports the training loop's seconds (`summary.json`; set-up, length pre-pass and saving are
left out) and the whole process's wall time, medians over repeats, and the ratio to 0 workers.
The per-step losses must be identical: workers build the same batches.

    python bench/train_workers.py --config runs/quickstart/configs/stage2.yaml --steps 200
    python bench/train_workers.py --config runs/quickstart/configs/motion.yaml --workers 1,2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def run_once(config: dict, workers: int, steps: int, work: Path) -> dict:
    run = work / f"workers-{workers}"
    stage = {**config, "output_dir": str(run), "max_steps": steps, "overwrite": True, "tensorboard": False,
             "data": {**config["data"], "num_workers": workers}}
    stage.pop("eval", None)
    path = work / f"workers-{workers}.yaml"
    path.write_text(yaml.safe_dump(stage, sort_keys=False))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llavakit", "train", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.loads((run / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"loop_s": summary["seconds"], "wall_s": wall, "losses": losses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a llavakit train config (a recipe run's configs/NAME.yaml)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--workers", default="1", help="worker counts compared with 0, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    counts = [0] + [int(n) for n in args.workers.split(",") if int(n) != 0]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in counts:
                runs[n].append(run_once(config, n, args.steps, Path(tmp)))
                print(f"repeat {repeat + 1}/{args.repeats}, {n} workers: loop {runs[n][-1]['loop_s']:.1f} s",
                      flush=True)
    reference = runs[0][0]["losses"]
    for n in counts:
        for result in runs[n]:
            assert result["losses"] == reference, f"{n} workers trained on other batches (losses differ)"
    base_loop = statistics.median(r["loop_s"] for r in runs[0])
    base_wall = statistics.median(r["wall_s"] for r in runs[0])
    rows = []
    for n in counts:
        loop = statistics.median(r["loop_s"] for r in runs[n])
        wall = statistics.median(r["wall_s"] for r in runs[n])
        rows.append({"workers": n, "loop s (median)": f"{loop:.1f}", "steps/s": f"{args.steps / loop:.2f}",
                     "speed-up (loop)": f"{base_loop / loop:.2f}", "wall s (median)": f"{wall:.1f}",
                     "speed-up (wall)": f"{base_wall / wall:.2f}"})
    print(common.table(rows))
    env = common.environment()
    settings = {"config": args.config, "steps": args.steps, "workers": counts, "repeats": args.repeats}
    results = {str(n): [{k: v for k, v in r.items() if k != "losses"} for r in runs[n]] for n in counts}
    path = common.write_json(args.out or common.default_out("train_workers"), "train_workers", settings, results, env)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
