"""Typed settings of a synthetic world; the same fields back the CLI flags and world.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llavakit.utils import described

# Bump when a change to the generator changes its output for the same settings, so an old
# world on disk is regenerated instead of being taken as complete.
WORLD_VERSION = 12  # 11: the held-out split is `test` (was `eval`), plus `dev` and `test_paraphrase`;
# 12: the stage-2 instructions also split into single-image and OneVision files

TRAIN_IMAGE_FORMATS = ("both", "interleaved", "front")
# Settings added after worlds existed, with the default that writes every file as before.
ADDED_LATER = {"train_image_format": "both"}


@dataclass(frozen=True)
class WorldSettings:
    seed: int = described(0, "seed of every random choice in the world (a recipe sets it from its own `seed`)")
    image_side: int = described(64, "side in pixels of single-image, multi-image and multi-view scenes")
    hires_side: int = described(256, "side in pixels of hires_detail images (at least 2 x image_side)")
    # 16 matches the quickstart tower's patches, so each object is one whole token (see scene.place).
    grid: int = described(16, "objects sit in the cells of a grid this many pixels wide (0: anywhere); "
                              "divides image_side")
    video_frames: int = described(8, "frames per video clip (at least 2, to show motion)")
    video_side: int = described(64, "side in pixels of video frames (even, at least 32)")
    video_fps: int = described(8, "frames per second of the written videos")
    stage1_captions: int = described(2000, "stage-1 caption samples (before scale)")
    train_per_task: int = described(300, "stage-2 training samples per task / sample kind (before scale)")
    eval_per_task: int = described(100, "test samples per eval task (before scale): the reported split")
    dev_per_task: int = described(50, "dev samples per eval task (before scale): new scenes, the split a "
                                      "recipe's choices are made on")
    paraphrase_per_task: int = described(50, "test_paraphrase samples per eval task (before scale): the first "
                                             "test scenes asked in a held-out phrasing; at most eval_per_task")
    max_objects: int = described(5, "most objects in one scene, 3..6 (count answers go 1..max_objects)")
    follow_ups: int = described(4, "extra short-answer questions per single-image training sample")
    # Off by default: only a recipe that trains a motion phase needs the clips.
    motion_drill: int = described(0, "direction clips of the stage-1.5 motion drill, stage15_motion.jsonl "
                                      "(before scale); 0 writes no such file")
    # LLaVA-NeXT-Interleave trains on both placements; one-format worlds are for its format ablation.
    train_image_format: str = described("both", "placement of the multi-image training samples: both (each "
                                                "format half the time), interleaved or front; the held-out "
                                                "splits always ask both, half each")
    scale: float = described(1.0, "multiplier on every sample count (a recipe sets it from its own `scale`)")

    def __post_init__(self) -> None:
        problems = []
        if self.image_side < 32:
            problems.append(f"image_side must be >= 32, got {self.image_side}")
        if self.hires_side < 2 * self.image_side:
            problems.append(
                f"hires_side must be >= 2 * image_side ({2 * self.image_side}) so its detail is lost "
                f"when squashed, got {self.hires_side}"
            )
        if self.video_side < 32 or self.video_side % 2:
            problems.append(f"video_side must be even and >= 32 (yuv420p), got {self.video_side}")
        if self.video_frames < 2:
            problems.append(f"video_frames must be >= 2 to show motion, got {self.video_frames}")
        if self.video_fps < 1:
            problems.append(f"video_fps must be >= 1, got {self.video_fps}")
        if self.grid < 0 or (self.grid and self.image_side % self.grid):
            problems.append(f"grid must be 0 or divide image_side ({self.image_side}), got {self.grid}")
        if not 3 <= self.max_objects <= 6:
            problems.append(f"max_objects must be in 3..6, got {self.max_objects}")
        if self.follow_ups < 0:
            problems.append(f"follow_ups must be >= 0, got {self.follow_ups}")
        if self.motion_drill < 0:
            problems.append(f"motion_drill must be >= 0, got {self.motion_drill}")
        if self.train_image_format not in TRAIN_IMAGE_FORMATS:
            problems.append(f"train_image_format must be one of {', '.join(TRAIN_IMAGE_FORMATS)}, "
                            f"got {self.train_image_format!r}")
        if self.scale <= 0:
            problems.append(f"scale must be > 0, got {self.scale}")
        for name in ("stage1_captions", "train_per_task", "eval_per_task", "dev_per_task", "paraphrase_per_task"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid WorldSettings: " + "; ".join(problems))

    def scaled(self, count: int | float) -> int:
        """A sample count after --scale; never below one so every file exists."""
        return max(1, round(count * self.scale))

    @property
    def n_stage1(self) -> int:
        return self.scaled(self.stage1_captions)

    @property
    def n_train(self) -> int:
        return self.scaled(self.train_per_task)

    @property
    def n_eval(self) -> int:
        """Samples of the test split per task."""
        return self.scaled(self.eval_per_task)

    @property
    def n_dev(self) -> int:
        return self.scaled(self.dev_per_task)

    @property
    def n_paraphrase(self) -> int:
        """Samples of the test_paraphrase split per task: the first test scenes, never more than there are."""
        return min(self.scaled(self.paraphrase_per_task), self.n_eval)

    def to_dict(self) -> dict:
        """The settings as world.json holds them; a later setting at its default (ADDED_LATER) is left
        out, so a world written before it existed is still taken as complete, and keeps its keys."""
        values = dataclasses.asdict(self)
        for name, default in ADDED_LATER.items():
            if values[name] == default:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> WorldSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
