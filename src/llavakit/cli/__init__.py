"""The `llavakit` command: one sub-command per module, imported only when used.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Keeping the registry as data (name -> module path) means `llavakit --help` stays fast and a
broken optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "demo": ("llavakit.cli.demo", "build a tiny model, save, reload and generate (smoke demo)"),
    "export": ("llavakit.cli.export", "write a checkpoint in the transformers hub layout"),
    "merge-lora": ("llavakit.cli.merge_lora", "merge a LoRA adapter into its base model, write a loadable model"),
    "train": ("llavakit.train.cli", "train a stage (1, 1.5, 2, continue, dpo) from a YAML config"),
    "plot": ("llavakit.train.plot", "draw loss and learning-rate curves of a run to PNG"),
    "eval": ("llavakit.evaluation.eval_cli", "evaluate a model on benchmark tasks; compare runs"),
    "datagen": ("llavakit.datagen.cli", "generate instruction data with a text-only LLM endpoint"),
    "recaption": ("llavakit.datagen.recaption_cli", "re-caption images with a model (ReCap, stage-1.5 data)"),
    "quickstart": ("llavakit.quickstart.run", "run the shipped recipe: synthetic world, stages 1, 1.5, 2, evaluation"),
    "recipe": ("llavakit.recipe.cli", "run, check or ablate a recipe YAML (world, components, stages, evaluation)"),
    "plan": ("llavakit.sizing.cli", "what a real model's recipe costs: parameters, visual tokens, FLOPs, memory per GPU"),
    "ablate-anyres": ("llavakit.quickstart.ablation", "the shipped AnyRes ablation: AnyRes against one 1x1 crop"),
    "synth": ("llavakit.synth.cli", "generate the synthetic world (images, videos, LLaVA JSON)"),
    "score": ("llavakit.evaluation.score_cli", "score saved predictions with a metric, no model needed"),
    "curate": ("llavakit.curate.cli", "metadata-balanced curation: metadata, match, balance"),
    "data": ("llavakit.data.cli", "inspect and check LLaVA-format data: inspect, stats, check"),
    "chat": ("llavakit.serving.chat_cli", "chat with a model in the terminal"),
    "serve": ("llavakit.serving.server_cli", "OpenAI-compatible HTTP server with a web chat page"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("llavakit")
    except PackageNotFoundError:  # a source tree on the path, never installed
        from llavakit import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavakit", description="LLaVA-family models: build, train, evaluate, serve.")
    parser.add_argument("--version", action="version", version=f"llavakit {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(f"llavakit {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"llavakit {name}", description=COMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
