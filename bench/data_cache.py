"""Benchmark: a multi-epoch pass over a training set with and without the media cache (CPU).

The data is the quickstart's stage-2 set (`llavakit synth`: 64 px scenes, AnyRes detail images up to
4x4 crops, two-image samples, 8-frame MP4 clips), read the way the quickstart's model reads it
(64 px crops, patch 16, 8 video frames). Each epoch encodes every sample (`LlavaDataset[i]`: media
decoded and normalised, ids and labels), once with `DataSettings(media_cache_mb=0)` and once with
the cache on; the two datasets are timed in alternation, epoch by epoch, and must give identical
pixels. Tokenized conversations are reused in both (the token cache is on by default).

    python bench/data_cache.py                         # generates a default world in a temp dir
    python bench/data_cache.py --world runs/quickstart/world --epochs 4 --out runs/bench/data_cache.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def quickstart_processor():
    from llavakit.config import LlavaConfig
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.recipe import load_recipe
    from llavakit.tiny.tokenizer import train_bpe_tokenizer

    config = LlavaConfig.model_validate({
        "vision": {"hf_config": {"model_type": "siglip_vision_model", "image_size": 64, "patch_size": 16,
                                 "hidden_size": 32}},
        "llm": {"hf_config": {"model_type": "qwen2", "hidden_size": 32}},
        "visual": {"crop_size": 64, **load_recipe("quickstart").model.visual},
    })
    return LlavaProcessor(config, train_bpe_tokenizer())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=None, help="a world directory (default: generate one in a temp dir)")
    parser.add_argument("--train-per-task", type=int, default=None, help="when generating: samples per task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache-mb", type=float, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    common.set_threads(args.threads, "cpu")
    from llavakit.data import DataSettings, LlavaDataset, load_entries
    from llavakit.synth import WorldSettings, generate_world

    world = Path(args.world) if args.world else Path(tempfile.mkdtemp()) / "world"
    if not args.world:
        settings = WorldSettings() if args.train_per_task is None else WorldSettings(
            train_per_task=args.train_per_task, eval_per_task=2, stage1_captions=8)
        generate_world(world, settings, progress=False)
    entries = load_entries(str(world / "stage2_instruct.jsonl"), str(world), str(world), 0).entries
    processor = quickstart_processor()
    datasets = {mb: LlavaDataset(entries, processor, DataSettings(template="chatml", max_length=4096,
                                                                   media_cache_mb=mb))
                for mb in (0.0, args.cache_mb)}
    for dataset in datasets.values():
        dataset.lengths()  # the header pre-pass the trainer runs first (fills the token cache)

    rows = []
    for epoch in range(1, args.epochs + 1):
        seconds, pixels = {}, {}
        for mb, dataset in datasets.items():  # alternated: a load spike hits both
            start = time.perf_counter()
            encoded = [dataset[i] for i in range(len(dataset))]
            seconds[mb] = time.perf_counter() - start
            pixels[mb] = [s.pixel_values for s in encoded]
        identical = all(np.array_equal(a, b) for a, b in zip(pixels[0.0], pixels[args.cache_mb]))  # None == None
        cache = datasets[args.cache_mb].media_cache
        rows.append({"epoch": epoch, "samples": len(entries), "no cache s": seconds[0.0],
                     "cache s": seconds[args.cache_mb], "speedup": seconds[0.0] / seconds[args.cache_mb],
                     "cache hits": cache.hits, "cache MiB": cache.store.bytes / 2**20, "identical": identical})
        if not identical:
            print(f"epoch {epoch}: cached pixels differ from decoded ones", file=sys.stderr)
            return 1
    env = common.environment()
    common.report("data_cache", env, rows, None, args.out,
                  {"world": str(world), "epochs": args.epochs, "cache_mb": args.cache_mb})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
