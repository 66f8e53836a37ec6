"""Visual layout: how one image or video is encoded, and how many tokens it becomes.

A :class:`VisualItem` is decided once, from the config and the media's size, by the processor. It
travels with the pixels to the model, which packs features by the same plan; both call
:func:`token_count`, so the placeholder count written into the prompt and the number of vectors the
model scatters into it come from one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llavakit import geometry
from llavakit.config import VisualConfig

Kind = Literal["anyres", "single", "video"]


@dataclass(frozen=True)
class VisualItem:
    """One image or video as the model will see it."""

    kind: Kind  # anyres: base view + grid of crops; single: one crop; video: frames
    media_size: tuple[int, int]  # original (height, width) of the image or of a frame
    num_crops: int  # images that go through the vision tower (base + grid, 1, or frames)
    grid: tuple[int, int] = (1, 1)  # (rows, cols) of AnyRes crops
    newline: str = "none"  # layout of newline vectors (see geometry.newline_count)

    def __post_init__(self) -> None:
        if self.num_crops < 1:
            raise ValueError(f"a visual item needs at least one crop, got {self.num_crops}")


def plan_image(visual: VisualConfig, media_size: tuple[int, int], multi_image: bool) -> VisualItem:
    """Decide how an image is encoded: AnyRes alone in a prompt, one padded crop among several."""
    mode = visual.multi_image_mode if multi_image else visual.image_mode
    newline = visual.multi_image_newline if multi_image else visual.image_newline
    if mode == "anyres":
        grid = geometry.grid_shape(media_size, visual.pinpoints(), visual.crop_size)
        return VisualItem("anyres", media_size, 1 + grid[0] * grid[1], grid, newline)
    return VisualItem("single", media_size, 1, (1, 1), newline)


def plan_video(visual: VisualConfig, frame_size: tuple[int, int], num_frames: int) -> VisualItem:
    return VisualItem("video", frame_size, num_frames, (1, 1), visual.video_newline)


def anyres_map_size(item: VisualItem, visual: VisualConfig, tokens_per_side: int) -> tuple[int, int]:
    """(height, width) in tokens of the grid map after unpadding and ``anyres_max`` reduction."""
    stitched = (item.grid[0] * tokens_per_side, item.grid[1] * tokens_per_side)
    unpadded = geometry.unpadded_size(item.media_size, stitched)
    return geometry.reduced_size(unpadded, tokens_per_side, visual.max_grids, visual.reduce_margin)


def video_frame_side(visual: VisualConfig, tokens_per_side: int) -> int:
    return geometry.pooled_side(tokens_per_side, visual.video_pool_factor)


def token_count(item: VisualItem, visual: VisualConfig, tokens_per_side: int) -> int:
    """Number of vectors (and so of placeholder tokens) that ``item`` becomes."""
    per_crop = tokens_per_side * tokens_per_side
    if item.kind == "anyres":
        height, width = anyres_map_size(item, visual, tokens_per_side)
        return per_crop + height * width + geometry.newline_count(item.newline, height)
    if item.kind == "single":
        return per_crop + geometry.newline_count(item.newline, tokens_per_side)
    side = video_frame_side(visual, tokens_per_side)
    return item.num_crops * side * side + geometry.newline_count(item.newline, side, frames=item.num_crops)
