"""`llavakit train CONFIG.yaml [--resume | --overwrite] [--set key.path=value ...]`; `llavakit train --schema [--json]`."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="training YAML (stage, model, data, output_dir, ...)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output_dir (checkpoints, model, logs) instead of refusing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--schema", action="store_true",
                        help="print the reference of every config field (markdown, docs/config-reference.md) and exit")
    parser.add_argument("--json", action="store_true", help="with --schema: the JSON schema of the training config")


def run(args: argparse.Namespace) -> int:
    if args.schema:
        from llavakit.train.schema_doc import json_schema, markdown

        print(json_schema() if args.json else markdown(), end="\n" if args.json else "")
        return 0
    if args.config is None:
        print("llavakit train: a config YAML is required (or --schema)", file=sys.stderr)
        return 2
    from llavakit.train.config import load_config

    config = load_config(args.config, args.overrides + (["overwrite=true"] if args.overwrite else []))
    if config.stage == "dpo":
        from llavakit.train.dpo import DpoTrainer as TrainerClass
    else:
        from llavakit.train.loop import Trainer as TrainerClass
    summary = TrainerClass(config).run(resume=args.resume)
    if summary:
        print(json.dumps(summary, indent=2))
    return 0
