"""Feature packing: per-crop features -> the sequence of vectors placed in the prompt.

AnyRes: the base view's tokens, then the crop grid stitched into one map, unpadded, reduced by the
``anyres_max`` threshold, given newline columns, flattened row-major. Single crops: tokens plus an
optional newline. Video: each frame pooled, frames concatenated, newlines by layout. The output
length always equals ``layout.token_count`` for the same item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavakit import geometry, layout
from llavakit.config import VisualConfig
from llavakit.layout import VisualItem


def resize_map(feature_map: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """(D, h, w) -> (D, *size) by bilinear interpolation or adaptive average pooling."""
    if tuple(feature_map.shape[-2:]) == tuple(size):
        return feature_map
    if method == "bilinear":
        return F.interpolate(feature_map[None], size=list(size), mode="bilinear")[0]
    return F.adaptive_avg_pool2d(feature_map[None], size)[0]


def stitch_grid(crops: torch.Tensor, grid: tuple[int, int], side: int) -> torch.Tensor:
    """(rows*cols, side*side, D) crop tokens -> one (D, rows*side, cols*side) map."""
    rows, cols = grid
    grid_map = crops.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3)  # (D, rows, side, cols, side)
    return grid_map.reshape(crops.shape[-1], rows * side, cols * side)


def anyres_map(crops: torch.Tensor, item: VisualItem, visual: VisualConfig, side: int) -> torch.Tensor:
    """Grid crops -> the unpadded, threshold-reduced (D, h, w) map (no newlines yet)."""
    stitched = stitch_grid(crops, item.grid, side)
    top, bottom, left, right = geometry.unpad_window(item.media_size, tuple(stitched.shape[1:]))
    unpadded = stitched[:, top:bottom, left:right]
    target = layout.anyres_map_size(item, visual, side)
    return resize_map(unpadded, target, visual.reduce_method)


def frame_maps(frames: torch.Tensor, visual: VisualConfig, side: int) -> torch.Tensor:
    """(F, side*side, D) -> pooled (F, D, p, p) frame maps."""
    maps = frames.view(frames.shape[0], side, side, -1).permute(0, 3, 1, 2)
    pooled = layout.video_frame_side(visual, side)
    if pooled == side:
        return maps
    if visual.video_pool_method == "bilinear":
        return F.interpolate(maps, size=[pooled, pooled], mode="bilinear")
    return F.adaptive_avg_pool2d(maps, (pooled, pooled))


def with_row_newlines(feature_map: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """(D, h, w) -> (h*(w+1), D): each row followed by the newline vector."""
    dim, height, _ = feature_map.shape
    column = newline.to(feature_map.dtype)[:, None, None].expand(dim, height, 1)
    return torch.cat((feature_map, column), dim=-1).flatten(1, 2).transpose(0, 1)


def flatten_map(feature_map: torch.Tensor) -> torch.Tensor:
    """(D, h, w) -> (h*w, D), row-major."""
    return feature_map.flatten(1, 2).transpose(0, 1)


def append_newline(tokens: torch.Tensor, newline: torch.Tensor | None, layout_name: str) -> torch.Tensor:
    if layout_name in ("image", "video", "frame"):
        return torch.cat((tokens, newline.to(tokens.dtype)[None]), dim=0)
    return tokens


def map_tokens(feature_map: torch.Tensor, newline: torch.Tensor | None, layout_name: str) -> torch.Tensor:
    """A (D, h, w) map as tokens under a newline layout (row, or one at the end, or none)."""
    if layout_name == "row":
        return with_row_newlines(feature_map, newline)
    return append_newline(flatten_map(feature_map), newline, layout_name)
