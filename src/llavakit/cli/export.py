"""`llavakit export`: write a model as a transformers checkpoint (hub layout) for vLLM / SGLang."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id (any layout llavakit loads)")
    parser.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    parser.add_argument(
        "--family", choices=["llava_onevision", "llava_next", "llava"], default=None,
        help="transformers model type to write (default: the model's own family)",
    )


def run(args: argparse.Namespace) -> int:
    import llavakit

    model = llavakit.load(args.model)
    if args.family:
        model.model.config = model.config.model_copy(update={"family": args.family})
    path = model.export(args.out)
    print(f"exported {args.model} as transformers {model.model.config.family} to {path}")
    return 0
