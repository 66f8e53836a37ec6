"""Appends the figures of one `bench/gpu.sh` run to RESULTS.md: device, date, commit, then each part's
status and table (from the JSON each benchmark wrote)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

PARTS = {
    "train-0.5b": "Training: stage-2 of the 0.5B shape, each lever alone and all together",
    "train-7b-lora": "Training: the 7B shape under LoRA",
    "inference": "Inference: decode at batch 1/16/64, time to first token for one 1080p image (0.5B shape)",
    "serve-load": "Serving: 64 concurrent clients on `llavakit serve` (0.5B checkpoint, random weights)",
    "engine": "Inference engine (bench/engine.py, 0.5B shape): decode vs transformers, the 32-client mixed load, "
              "the five-turn 1080p chat with and without the media cache",
}


def _rows(path: Path) -> list[dict]:
    """The rows of a part's JSON, without the per-repeat lists (they stay in the JSON)."""
    data = json.loads(path.read_text())
    rows = data["reports"] if "reports" in data else data["results"]["rows"]  # serve_load.py has its own format
    return _scalars(rows)


def _scalars(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} for row in rows]


def _tables(path: Path) -> str:
    """A part's tables: one per named table (bench/engine.py's decode, load, chat), else its rows."""
    tables = json.loads(path.read_text()).get("results", {}).get("tables")
    if not tables:
        return common.table(_rows(path))
    return "\n\n".join(f"{name}:\n\n{common.table(_scalars(rows))}" for name, rows in tables.items())


def section(directory: Path, mode: str) -> str:
    env = common.environment()
    status = {}
    for line in (directory / "status.tsv").read_text().splitlines():
        part, code, seconds = line.split("\t")
        status[part] = (code, seconds)
    title = "GPU" if mode == "gpu" else "bench/gpu.sh --dry-run (CPU, tiniest sizes: checks the commands, not figures)"
    lines = [f"## {title}: {env['date']}, `bench/gpu.sh`", "",
             f"- **Device**: {env['device']}", f"- **Git**: `{env['git']}`",
             f"- **JSON**: `{directory}`",
             "- **Parts** (exit status, seconds): " + ", ".join(f"{p} {c} ({s} s)" for p, (c, s) in status.items()), ""]
    for part, heading in PARTS.items():
        if part not in status:  # not selected (bench/gpu.sh --parts)
            continue
        lines.append(f"### {heading}")
        lines.append("")
        path = directory / f"{part}.json"
        code = status[part][0]
        if path.is_file():
            lines.append(_tables(path))
        else:
            lines.append(f"No figures: the part ended with {code}" +
                         (" (it ran out of its time budget)" if code == "timeout" else "") + ".")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="the run's folder (status.tsv and the JSON of each part)")
    parser.add_argument("--results", required=True, help="the markdown file to append to")
    parser.add_argument("--mode", choices=["gpu", "dry"], default="gpu")
    args = parser.parse_args(argv)
    text = section(Path(args.dir), args.mode)
    results = Path(args.results)
    before = results.read_text() if results.is_file() else "# Benchmark results\n"
    from llavakit.utils.atomic import atomic_write_text

    atomic_write_text(results, before.rstrip("\n") + "\n\n" + text)
    print(text)
    print(f"appended to {results}")
    failed = [line for line in (Path(args.dir) / "status.tsv").read_text().splitlines()
              if line.split("\t")[1] not in ("0", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
