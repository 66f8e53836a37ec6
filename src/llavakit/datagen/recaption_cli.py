"""``llavakit recaption --model PATH --images DIR|LIST --out FILE.jsonl``: ReCap stage-1.5 data (seed 003)."""

from __future__ import annotations

import argparse

from llavakit.utils.device import default_device

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llavakit.datagen.recaption import RECAP_PROMPT, RecaptionSettings

    d = RecaptionSettings("", "")
    parser.add_argument("--model", required=True, help="any checkpoint llavakit.load accepts")
    parser.add_argument("--images", required=True, metavar="DIR|LIST",
                        help="a folder (recursive), a .txt list of paths, or a LLaVA .json/.jsonl file")
    parser.add_argument("--out", required=True, help="LLaVA JSONL to write (appended to; reruns resume)")
    parser.add_argument("--image-folder", help="root of relative paths in a list file (default: the list's folder)")
    parser.add_argument("--prompt", default=RECAP_PROMPT, help="(default: %(default)r)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="(%(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="(%(default)s)")
    parser.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy (%(default)s)")
    parser.add_argument("--top-p", type=float, default=d.top_p, help="(%(default)s)")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--keep-truncated", action="store_true",
                        help="keep captions cut by --max-new-tokens (default: rejected)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    import llavakit
    from llavakit.datagen.recaption import RecaptionSettings, recaption

    # A bad argument, image list or model is a LlavakitError: the dispatcher reports it in one line.
    settings = RecaptionSettings(
        images=args.images, output=args.out, prompt=args.prompt, image_folder=args.image_folder,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, keep_truncated=args.keep_truncated, limit=args.limit,
        progress=not args.quiet)
    device = args.device or default_device()
    llava = llavakit.load(args.model, dtype=getattr(torch, args.dtype), device=device)
    summary = recaption(llava, settings)
    rate = f"{(summary.written + summary.rejected) / summary.seconds:.2f} img/s" if summary.seconds > 0 else ""
    print(f"{summary.images} images: {summary.already_done} done before, {summary.written} captioned"
          f"{f' ({summary.truncated_kept} truncated, kept)' if summary.truncated_kept else ''}, "
          f"{summary.rejected} rejected {summary.reasons or ''} {rate}".rstrip())
    print(f"-> {summary.output} (train with image_folder: {summary.image_root})")
    return 0
