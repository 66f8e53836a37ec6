"""The `llavakit` command: one sub-command per module, imported only when used.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Keeping the registry as data (name -> module path) means `llavakit --help` stays fast and a
broken optional dependency of one command never breaks the others.

Failures are reported here, once for every command: a user error (``LlavakitError``: a missing
model, a config typo, bad data, a refused export) prints ``llavakit CMD: message`` on one line
and exits 2; an optional package that is not installed names the extra that brings it; Ctrl-C
exits 130 without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llavakit.errors import LlavakitError

# Optional packages (import name) and what installs them: the extras of pyproject.toml, and the
# packages of single features that no extra carries (the lmms-eval adapter, evaluation data from
# the hub, QLoRA, flash attention).
OPTIONAL_PACKAGES: dict[str, str] = {
    "fastapi": "llavakit[serve]", "uvicorn": "llavakit[serve]", "starlette": "llavakit[serve]",
    "peft": "llavakit[train]", "tensorboard": "llavakit[train]", "wandb": "llavakit[train]",
    "pyarrow": "llavakit[data]",
    "lmms_eval": "lmms-eval", "datasets": "llavakit[eval]", "bitsandbytes": "bitsandbytes", "flash_attn": "flash-attn",
}
USER_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as shells report it

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
    "lab": ("llavakit.recipe.lab_cli", "run an ablation: every arm x seed of a recipe, mean/std/paired tables, chart"),
    "plan": ("llavakit.sizing.cli", "what a real model's recipe costs: parameters, visual tokens, FLOPs, memory per GPU"),
    "ablate-anyres": ("llavakit.quickstart.ablation", "the shipped AnyRes ablation (= llavakit lab ablations/anyres)"),
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
    try:
        return run_command(name, rest)
    except LlavakitError as err:
        return refuse(name, str(err))
    except ModuleNotFoundError as err:
        hint = install_hint(err)
        if hint is None:
            raise  # not an optional package: a broken installation, the traceback says where
        return refuse(name, hint)
    except KeyboardInterrupt:
        return INTERRUPTED


def run_command(name: str, rest: list[str]) -> int:
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"llavakit {name}", description=COMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    return int(module.run(args) or 0)


def refuse(name: str, message: str) -> int:
    """``llavakit NAME: message`` on one line of stderr; the exit status of a user error."""
    print(f"llavakit {name}: {one_line(message)}", file=sys.stderr)
    return USER_ERROR


def one_line(message: str) -> str:
    """Fold a message's line breaks: ``reason:`` runs on into its detail, other lines join with ``; ``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    folded = lines[0] if lines else ""
    for line in lines[1:]:
        folded += (" " if folded.endswith(":") else "; ") + line
    return folded


def install_hint(err: ModuleNotFoundError) -> str | None:
    """What to install for a missing optional package, or None for any other missing module."""
    package = (err.name or "").split(".")[0]
    if package not in OPTIONAL_PACKAGES:
        return None
    return f"needs {package}, which is not installed: pip install '{OPTIONAL_PACKAGES[package]}'"


if __name__ == "__main__":
    raise SystemExit(main())
