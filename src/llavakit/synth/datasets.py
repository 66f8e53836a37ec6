"""The world's training sets by name: what a recipe's data mixtures may name.

Every training file a world can hold (stage-1 captions, stage-1.5 re-captions, each stage-1.5
drill of ``world.drills``, stage-2 instructions) is a named dataset here, with the media its
records point to (which mixture folder keys they need). How many records a world holds follows
from its settings alone, so a recipe can be checked before the world is generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import tasks_multi, tasks_single
from .settings import WorldSettings
from .world import (
    DRILL_FILES,
    MOTION_FILE,
    STAGE1_FILE,
    ONEVISION_KINDS,
    SINGLE_IMAGE_KINDS,
    STAGE2_FILE,
    STAGE2_ONEVISION_FILE,
    STAGE2_SINGLE_FILE,
    STAGE15_FILE,
    TRAIN_KINDS,
    drills,
    train_count,
)

DRILL_PREFIX = "stage15_"
# Eval tasks whose samples show images (one or several): the ones an image-swap control can ask.
IMAGE_EVAL_TASKS: tuple[str, ...] = tuple(task.name for task in tasks_single.TASKS + tasks_multi.TASKS)


@dataclass(frozen=True)
class WorldDataset:
    name: str
    file: str  # LLaVA JSONL, relative to the world directory
    images: bool  # records name images (under the world directory)
    videos: bool  # records name videos (under the world directory)
    description: str


def _drill_name(file: str) -> str:
    return file.removeprefix(DRILL_PREFIX).removesuffix(".jsonl")


DATASETS: dict[str, WorldDataset] = {d.name: d for d in (
    WorldDataset("captions", STAGE1_FILE, True, False, "stage-1 short captions"),
    WorldDataset("recaptions", STAGE15_FILE, True, False, "stage-1.5 detailed re-captions of the stage-1 images"),
    *(WorldDataset(_drill_name(file), file, file != MOTION_FILE, file == MOTION_FILE, f"stage-1.5 drill ({file})")
      for file in DRILL_FILES),
    WorldDataset("instruct", STAGE2_FILE, True, True, "stage-2 instructions: every task of the world"),
    WorldDataset("instruct_single", STAGE2_SINGLE_FILE, True, False,
                 "stage-2 single-image (and text-only) instructions: the part of `instruct` a single-image stage trains on"),
    WorldDataset("instruct_onevision", STAGE2_ONEVISION_FILE, True, True,
                 "stage-2 multi-image, multi-view and video instructions: the rest of `instruct`, for the OneVision stage"),
)}


def dataset_sizes(settings: WorldSettings) -> dict[str, int]:
    """Records of each dataset a world with these settings holds; a drill it does not generate
    (the motion clips when ``motion_drill`` is 0) is absent."""
    by_file = {
        STAGE1_FILE: settings.n_stage1,
        STAGE15_FILE: settings.n_stage1,  # one re-caption per stage-1 image
        STAGE2_FILE: sum(train_count(task, settings) for task in TRAIN_KINDS),
        STAGE2_SINGLE_FILE: sum(train_count(task, settings) for task in SINGLE_IMAGE_KINDS),
        STAGE2_ONEVISION_FILE: sum(train_count(task, settings) for task in ONEVISION_KINDS),
        **{file: count for file, (_, count) in drills(settings).items()},
    }
    return {name: by_file[d.file] for name, d in DATASETS.items() if d.file in by_file}


def missing_reason(name: str, settings: WorldSettings) -> str:
    """Why ``name`` is not a dataset of a world with these settings (one line)."""
    if name not in DATASETS:
        return f"unknown dataset {name!r}; the world's datasets: {', '.join(DATASETS)}"
    if DATASETS[name].file == MOTION_FILE:
        return f"dataset {name!r} is only generated when world.motion_drill > 0"
    return f"dataset {name!r} is not generated with these world settings"
