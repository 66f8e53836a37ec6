"""Benchmark: time to the first batch and resident memory per process on a large mixture.

Builds a mixture of ``--samples`` samples whose images are drawn from a pool of ``--pool`` small
files: a share as LLaVA JSONL with image paths, the rest as Parquet shards in the
LLaVA-OneVision-Data schema with the image bytes inside (row groups of 100 rows, as Hugging Face
``datasets`` writes image data). The same samples, in the same order, are also written as one LLaVA
JSON list with paths.

Each contender runs in a fresh process (one training rank's work) and reports the seconds to its
first micro-batches of step 0 (data opened, batch plan made, samples decoded and collated), from
the process start (imports and the tokenizer included) and from the data alone, and its peak
resident memory:

- ``streamed``: the mixture YAML through ``load_entries`` (indexes of line offsets and row groups,
  records read on access) and a plan from the sample count (``data.length_prepass: false``);
- ``load everything``: the JSON list read whole into the process, as LLaVA-NeXT's
  ``LazySupervisedDataset`` does (``json.load`` of the full list in every rank, the list of dicts
  kept), then the same plan and the same encoding (an entry made per sample read).

Both must give the same first batch (ids and labels compared). Figures go to the JSON; the table
is printed.

    python bench/data_scale.py --samples 1000000            # writes the data to a temp dir
    python bench/data_scale.py --samples 2000 --work /tmp/scale --out runs/bench/data_scale.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

COLOURS = ["red", "green", "blue", "yellow", "grey", "purple", "orange", "white"]
ROW_GROUP = 100  # rows per Parquet row group: what Hugging Face datasets writes for image features


def _image_pool(folder: Path, count: int, side: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pool = []
    for k in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        (folder / f"{k}.jpg").write_bytes(buffer.getvalue())
        pool.append(buffer.getvalue())
    return pool


def _record(i: int, image: int | None) -> dict:
    colour = COLOURS[i % len(COLOURS)]
    if image is None:
        return {"id": f"s{i}", "conversations": [{"from": "human", "value": f"Say the number {i}."},
                                                  {"from": "gpt", "value": f"{i}"}]}
    return {"id": f"s{i}", "image": f"pool/{image}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nWhat colour is picture {i}?"},
        {"from": "gpt", "value": f"Mostly {colour}, with noise."}]}


def build(work: Path, samples: int, pool_size: int, side: int, parquet_share: float, shard_rows: int,
          seed: int) -> dict:
    """The mixture (JSONL + Parquet shards) and the same samples as one JSON list; returns paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    pool = _image_pool(work / "pool", pool_size, side, seed)
    rng = np.random.default_rng(seed + 1)
    picks = rng.integers(0, pool_size, samples)
    records = [_record(i, None if i % 10 == 9 else int(picks[i])) for i in range(samples)]
    in_jsonl = samples - int(round(samples * parquet_share))
    with open(work / "paths.jsonl", "w") as handle:
        for record in records[:in_jsonl]:
            handle.write(json.dumps(record) + "\n")
    with open(work / "all.json", "w") as handle:  # the load-everything contender's file
        handle.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    shards = work / "onevision"
    shards.mkdir(exist_ok=True)
    schema = pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
                        ("data_source", pa.string())])
    for number, start in enumerate(range(in_jsonl, samples, shard_rows)):
        rows = records[start:start + shard_rows]
        table = pa.table({
            "id": [r["id"] for r in rows],
            "image": [{"bytes": pool[int(r["image"][5:-4])], "path": r["image"]} if "image" in r else None
                      for r in rows],
            "conversations": [r["conversations"] for r in rows],
            "data_source": ["data_scale"] * len(rows),
        }, schema=schema)
        pq.write_table(table, shards / f"train-{number:05d}.parquet", row_group_size=ROW_GROUP)
    mixture = work / "mix.yaml"
    mixture.write_text(f"seed: {seed}\ndatasets:\n  - path: paths.jsonl\n    image_folder: .\n"
                       f"  - path: onevision\n")
    sizes = {name: sum(f.stat().st_size for f in (work / name).rglob("*") if f.is_file()) if (work / name).is_dir()
             else (work / name).stat().st_size for name in ("paths.jsonl", "onevision", "all.json", "pool")}
    return {"mixture": str(mixture), "json": str(work / "all.json"), "jsonl_samples": in_jsonl,
            "parquet_samples": samples - in_jsonl, "build_s": time.perf_counter() - started,
            "bytes": sizes}


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss
    across exec, so a child would report its parent's peak (the builder held every record)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on most systems


def first_batch(contender: str, data: str, global_batch: int, micro_batch: int, world_size: int,
                seed: int) -> dict:
    """One rank's start: open the data, plan, encode and collate its micro-batches of step 0."""
    started = time.perf_counter()
    from data_cache import quickstart_processor
    from llavakit.data import Collator, DataSettings, LlavaDataset, load_entries
    from llavakit.data.sources import EntryTable, Origin, Source
    from llavakit.train.plan import BatchPlan

    class RecordList(Source):
        """The loaded list of dicts, wrapped as an entry only when a sample is read."""

        def __init__(self, path: Path, records: list):
            self.path, self.records, self.origin = path, records, Origin(str(path.parent), None, path.stem)

        def __len__(self) -> int:
            return len(self.records)

        def entry(self, index: int):
            return self.origin.entry(self.records[index], str(self.path), index + 1)

    processor = quickstart_processor()
    imported = time.perf_counter()
    if contender == "streamed":
        entries = load_entries(data).entries
    else:  # LLaVA-NeXT: json.load(open(data_path)) in every process, the whole list of dicts kept
        with open(data) as handle:
            records = json.load(handle)
        entries = EntryTable([(RecordList(Path(data), records), None)])
    opened = time.perf_counter()
    dataset = LlavaDataset(entries, processor, DataSettings(template="chatml", max_length=4096))
    count = len(dataset)
    plan = BatchPlan(range(count), (0,) * count, (True,) * count, global_batch, micro_batch, world_size, seed,
                     group_by_length=False)
    collate = Collator(processor.tokenizer.pad_token_id or 0)
    batches = [collate([dataset[i] for i in indices]) for indices in plan.micro_batches(0, 0)]
    done = time.perf_counter()
    peak_mib = peak_rss_mib()
    return {
        "samples": count, "open s": opened - imported, "data to first batch s": done - imported,
        "start to first batch s": done - started, "peak RSS MiB": peak_mib,
        "first ids": [s for b in batches for s in b.sample_ids],
        "digest": int(sum(int(b.input_ids.sum()) + int(b.labels.sum()) for b in batches)),
    }


def _child(contender: str, data: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", contender, "--data", data, "--global-batch",
               str(args.global_batch), "--micro-batch", str(args.micro_batch), "--world-size", str(args.world_size),
               "--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--pool", type=int, default=1000, help="distinct image files the samples draw from")
    parser.add_argument("--image-side", type=int, default=24, help="pixels per side of the pool's images")
    parser.add_argument("--parquet-share", type=float, default=0.3, help="share of the samples in Parquet shards")
    parser.add_argument("--shard-rows", type=int, default=50_000, help="rows per Parquet shard")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--world-size", type=int, default=8, help="ranks the global batch is split over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="where to write the data (default: a temp dir, removed)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", choices=("streamed", "load everything"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(first_batch(args.child, args.data, args.global_batch, args.micro_batch, args.world_size,
                                     args.seed)))
        return 0

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="data_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        built = build(work, args.samples, args.pool, args.image_side, args.parquet_share, args.shard_rows, args.seed)
        print(f"built {args.samples} samples in {built['build_s']:.1f} s: "
              + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in built["bytes"].items()), flush=True)
        results = {name: _child(name, data, args)
                   for name, data in (("streamed", built["mixture"]), ("load everything", built["json"]))}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    same = (results["streamed"]["first ids"] == results["load everything"]["first ids"]
            and results["streamed"]["digest"] == results["load everything"]["digest"])
    rows = [{"contender": name, **{k: r[k] for k in ("samples", "open s", "data to first batch s",
                                                     "start to first batch s", "peak RSS MiB")}}
            for name, r in results.items()]
    for row in rows:
        row["same first batch"] = same
    env = common.environment()
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "data")} | {
        "jsonl_samples": built["jsonl_samples"], "parquet_samples": built["parquet_samples"],
        "build_s": built["build_s"], "bytes": built["bytes"]}
    common.report("data_scale", env, rows, None, args.out, settings)
    if not same:
        print("the streamed and load-everything first batches differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
