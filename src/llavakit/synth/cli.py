"""`llavakit synth`: generate the synthetic world into a directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .settings import WorldSettings
from .world import generate_world, is_complete, load_world

# Settings fields exposed as flags, with their help text (the defaults come from WorldSettings).
FLAGS = {
    "seed": "random seed; the same seed gives byte-identical files",
    "image_side": "side in pixels of normal images and multi-view images",
    "hires_side": "side in pixels of hires_detail images (>= 2x --image-side)",
    "grid": "objects sit inside the cells of a grid this many pixels wide (0: anywhere)",
    "video_frames": "frames per video",
    "video_side": "side in pixels of video frames (even)",
    "video_fps": "frames per second written into the MP4",
    "stage1_captions": "stage-1 caption samples (before --scale)",
    "train_per_task": "stage-2 samples per task and sample kind (before --scale)",
    "eval_per_task": "test samples per eval task (before --scale): the reported split",
    "dev_per_task": "dev samples per eval task (before --scale): new scenes to make choices on",
    "paraphrase_per_task": "test_paraphrase samples per eval task (before --scale): test scenes, held-out wording",
    "max_objects": "most objects in one scene",
    "follow_ups": "extra short-answer questions per single-image training sample",
    "motion_drill": "direction clips of the stage-1.5 motion drill, stage15_motion.jsonl (before --scale; 0: no file)",
    "train_image_format": "placement of multi-image training samples: both, interleaved or front (held-out: both)",
    "scale": "multiplier on every sample count",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the world into")
    defaults = WorldSettings()
    for field in dataclasses.fields(WorldSettings):
        value = getattr(defaults, field.name)
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(value),
            default=value,
            help=f"{FLAGS[field.name]} (default: {value})",
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
