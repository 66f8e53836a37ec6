"""`llavakit data inspect | stats | check`: look at data the way training will see it.

``--model`` names a checkpoint; only its config and tokenizer are read (no weights), because token
counts depend on the visual config and the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="print one sample with its trained spans marked, and its token counts")
    _common(inspect)
    which = inspect.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="position of the sample (default 0)")
    which.add_argument("--id", dest="sample_id", help="the sample's id")
    inspect.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    stats = sub.add_parser("stats", help="samples, modalities and tokens per dataset (from file headers)")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check = sub.add_parser("check", help="decode every sample; list every bad one with its reason")
    _common(check)
    check.add_argument("--report", type=Path, help="write skipped samples here as JSONL")
    check.add_argument("--limit", type=int, help="check only the first N samples")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="LLaVA .json / .jsonl file or a mixture .yaml")
    parser.add_argument("--model", required=True, help="checkpoint directory (its config and tokenizer are used)")
    parser.add_argument("--image-folder", type=Path)
    parser.add_argument("--video-folder", type=Path)
    parser.add_argument("--template", default="auto", help="auto, tokenizer, plain, chatml, qwen, vicuna_v1, llama3")
    parser.add_argument("--max-length", type=int, default=32768)
    parser.add_argument("--placement", choices=("interleaved", "front", "mixed"), default="interleaved")
    parser.add_argument("--front-ratio", type=float, default=0.5)
    parser.add_argument("--time-instruction", action="store_true")
    parser.add_argument("--seed", type=int, help="mixture seed (default: the mixture file's)")
    parser.add_argument("--allow-outside-media-root", action="store_true",
                        help="let media paths leave their folder ('..', absolute paths, symlinks out)")


def load_processor(model: str) -> Any:
    """The processor of a checkpoint without loading its weights."""
    from llavakit.checkpoint import files, io
    from llavakit.processing.processor import LlavaProcessor

    directory = io.resolve(model)
    keys = [key for path in sorted(directory.glob("*.safetensors")) for key in files.safetensors_keys(path)]
    config = io.config_for(directory, keys)
    return LlavaProcessor(config, io.load_tokenizer(directory, config))


def build(args: argparse.Namespace, on_error: str):
    from llavakit.data.dataset import DataSettings, LlavaDataset
    from llavakit.data.mixture import load_entries
    from llavakit.data.placement import PlacementSettings

    mixture = load_entries(args.data, args.image_folder, args.video_folder, args.seed)
    placement = PlacementSettings(format=args.placement, front_ratio=args.front_ratio, seed=mixture.seed)
    settings = DataSettings(template=args.template, max_length=args.max_length, on_error=on_error,
                            placement=placement, time_instruction=args.time_instruction,
                            allow_outside_media_root=args.allow_outside_media_root)
    return LlavaDataset(mixture.entries, load_processor(args.model), settings), mixture


def run(args: argparse.Namespace) -> int:
    try:
        return {"inspect": run_inspect, "stats": run_stats, "check": run_check}[args.action](args)
    except LlavakitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run_inspect(args: argparse.Namespace) -> int:
    from llavakit.data.show import counts, marked_text

    dataset, _ = build(args, "raise")
    index = args.index
    if args.sample_id is not None:
        matches = [i for i, e in enumerate(dataset.entries) if e.sample_id == args.sample_id]
        if not matches:
            print(f"error: no sample with id {args.sample_id!r} in {args.data}", file=sys.stderr)
            return 1
        index = matches[0]
    if not 0 <= index < len(dataset):
        print(f"error: index {index} is outside 0..{len(dataset) - 1}", file=sys.stderr)
        return 1
    sample = dataset.encode(index)
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()
    processor = dataset.processor
    placeholders = {t for t in (processor.image_token_id, processor.video_token_id) if t is not None}
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    entry = dataset.entries[index]
    print(f"sample {sample.sample_id!r} ({entry.location}), modality {sample.modality}, "
          f"template {dataset.template.name}")
    print("-" * 72)
    print(marked_text(ids, labels, processor.tokenizer, placeholders, color=color))
    print("-" * 72)
    n = counts(ids, labels, placeholders)
    print(f"tokens: text {n.text}, visual {n.visual}, total {n.total} (trained {n.trained}); "
          f"max_length {dataset.settings.max_length}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from llavakit.data.stats import format_stats, mixture_stats

    dataset, mixture = build(args, "skip")
    parts, total = mixture_stats(dataset, mixture)
    if args.json:
        print(json.dumps({"datasets": [p.as_dict() for p in parts], "total": total.as_dict()}, indent=2))
    else:
        print(format_stats(parts, total))
    for item in dataset.prepass_skipped[:20]:
        print(f"skipped {item.sample_id!r} ({item.data_file}): {item.code}: {item.reason}", file=sys.stderr)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from llavakit.data.errors import SkippedSample, SkipReport

    dataset, _ = build(args, "skip")
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    report = SkipReport()
    for index in tqdm(range(count), desc="check", unit="sample", disable=not sys.stderr.isatty()):
        result = dataset[index]
        if isinstance(result, SkippedSample):
            report.extend([result])
    for item in report.samples:
        media = f" [{item.media_file}]" if item.media_file else ""
        print(f"{item.sample_id}\t{item.data_file}{media}\t{item.code}\t{item.reason}")
    print(f"checked {count} samples; {report.summary()}")
    if args.report:
        print(f"report: {report.write(args.report)}")
    return 1 if len(report) else 0
