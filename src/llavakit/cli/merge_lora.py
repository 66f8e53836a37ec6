"""`llavakit merge-lora --base B --adapter A --out DIR`: base + LoRA adapter -> one loadable model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the checkpoint the LoRA run started from (its model.checkpoint)")
    parser.add_argument("--adapter", required=True, help="adapter directory (a LoRA run's RUN/adapter)")
    parser.add_argument("--out", required=True,
                        help="directory to write the merged llavakit model to (replaced atomically)")


def run(args: argparse.Namespace) -> int:
    import llavakit

    path = llavakit.load(args.base, adapter=args.adapter).save(args.out)
    print(f"merged {args.adapter} into {args.base}: {path}")
    return 0
