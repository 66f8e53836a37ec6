"""`llavakit export`: write a model for a server: transformers hub layout (vLLM) or research layout (SGLang)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id (any layout llavakit loads)")
    parser.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    parser.add_argument(
        "--layout", choices=["hf", "original"], default="hf",
        help="hf: transformers layout (vLLM, transformers); original: LLaVA-NeXT research layout and mm_* "
             "config keys (SGLang's LlavaQwenForCausalLM / LlavaLlamaForCausalLM)",
    )
    parser.add_argument(
        "--family", choices=["llava_onevision", "llava_next", "llava"], default=None,
        help="transformers model type to write with --layout hf (default: the model's own family)",
    )


def run(args: argparse.Namespace) -> int:
    import llavakit

    model = llavakit.load(args.model)
    if args.family:
        model.model.config = model.config.model_copy(update={"family": args.family})
    path = model.export(args.out, layout=args.layout)
    what = f"transformers {model.model.config.family}" if args.layout == "hf" else "the original research layout"
    print(f"exported {args.model} as {what} to {path}")
    return 0
