"""`llavakit synth`: generate the synthetic world into a directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from llavakit.utils import DESCRIPTION

from .settings import WorldSettings
from .world import generate_world, is_complete, load_world

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the world into")
    # Every world setting is a flag, with the description the config reference shows.
    defaults = WorldSettings()
    for field in dataclasses.fields(WorldSettings):
        value = getattr(defaults, field.name)
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(value),
            default=value,
            help=f"{field.metadata[DESCRIPTION]} (default: {value})",
        )
    parser.add_argument("--force", action="store_true", help="regenerate even if the same world is already there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> WorldSettings:
    return WorldSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(WorldSettings)})


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"llavakit synth: {error}", file=sys.stderr)
        return 2
    if not args.force and is_complete(Path(args.out), settings):
        print(f"{args.out}: already holds a complete world with these settings; nothing to do (use --force to redo)")
        return 0
    start = time.perf_counter()
    out = generate_world(args.out, settings, progress=not args.quiet, force=True)
    world = load_world(out)
    files = ", ".join(f"{name}: {n}" for name, n in world["files"].items() if "/" not in name)
    sizes = ", ".join(f"{split} {next(iter(tasks.values()))['n']}" for split, tasks in world["splits"].items())
    print(
        f"wrote {out} in {time.perf_counter() - start:.1f}s: {world['media']['images']} images, "
        f"{world['media']['videos']} videos, {len(world['tasks'])} eval tasks x ({sizes}); {files}"
    )
    return 0
