"""Pure geometry and token arithmetic of LLaVA visual representations.

Everything here is plain integer math on sizes, shared by the processor (which must know how many
placeholder tokens to write before the model runs), the model (which packs features into exactly
that many vectors) and the server (which checks context limits before generating). One function
decides each number, so the three can never disagree.

Conventions: sizes are (height, width); a "grid pinpoint" is a candidate canvas (height, width) in
pixels; "tokens per side" is crop_size // patch_size of the vision tower (27 for SigLIP-384/14).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

Size = tuple[int, int]  # (height, width)

_RANGE_FORM = re.compile(r"^\s*\((\d+)x(\d+)\)\s*,\s*\.\.\.\s*,\s*\((\d+)x(\d+)\)\s*$")


def parse_grid_pinpoints(spec: str | Iterable[Sequence[int]], crop_size: int) -> list[Size]:
    """Candidate canvases in pixels, as (height, width) pairs.

    Accepts an explicit list of pixel sizes ``[[384, 768], ...]`` or the LLaVA-NeXT range form
    ``"(1x1),...,(6x6)"``, which means every grid of a rows x b columns crops with a and b in the
    two ranges. The range form is ordered rows-major, as transformers' converted checkpoints are,
    because ties in :func:`select_best_resolution` go to the first candidate.
    """
    if isinstance(spec, str):
        match = _RANGE_FORM.match(spec)
        if not match:
            raise ValueError(
                f"grid pinpoints {spec!r}: expected a list of [height, width] pixel sizes or the range form "
                "'(AxB),...,(CxD)', e.g. '(1x1),...,(6x6)'"
            )
        r0, c0, r1, c1 = (int(g) for g in match.groups())
        if not (1 <= r0 <= r1 and 1 <= c0 <= c1):
            raise ValueError(f"grid pinpoints {spec!r}: the range must grow from the first grid to the last")
        return [(r * crop_size, c * crop_size) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
    pinpoints = []
    for item in spec:
        if len(item) != 2 or any(int(v) <= 0 for v in item):
            raise ValueError(f"grid pinpoint {item!r}: expected [height, width] with positive pixel sizes")
        height, width = int(item[0]), int(item[1])
        if height % crop_size or width % crop_size:
            raise ValueError(
                f"grid pinpoint {[height, width]}: both sides must be multiples of the crop size {crop_size}"
            )
        pinpoints.append((height, width))
    if not pinpoints:
        raise ValueError("grid pinpoints: the list is empty")
    return pinpoints


def select_best_resolution(image_size: Size, pinpoints: Sequence[Size]) -> Size:
    """The canvas that keeps the most of the image's pixels, then wastes the fewest.

    For each candidate (h, w): scale s = min(w/W, h/H) fits the image inside; effective pixels are
    min(int(W*s) * int(H*s), W*H) (upscaling adds no information); waste is h*w - effective.
    The largest effective wins; ties go to the smallest waste, then to the earliest candidate.
    """
    height, width = image_size
    best, best_effective, best_waste = None, 0, math.inf
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_h, cand_w), effective, waste
    if best is None:
        raise ValueError(f"no grid pinpoint fits an image of size {image_size}")
    return best


def fit_inside(image_size: Size, canvas: Size) -> Size:
    """Size of the image resized to fit inside ``canvas`` keeping its aspect ratio.

    The long side (relative to the canvas) matches the canvas exactly; the other is rounded up and
    clipped to the canvas, as the reference processors do.
    """
    height, width = image_size
    canvas_h, canvas_w = canvas
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), canvas_h), canvas_w
    return canvas_h, min(math.ceil(width * scale_h), canvas_w)


def paste_offset(inner: Size, canvas: Size) -> Size:
    """Top-left corner that centers ``inner`` on ``canvas`` (extra pixel goes bottom/right)."""
    return (canvas[0] - inner[0]) // 2, (canvas[1] - inner[1]) // 2


def grid_shape(image_size: Size, pinpoints: Sequence[Size], crop_size: int) -> Size:
    """(rows, cols) of crops that AnyRes cuts the image into."""
    best_h, best_w = select_best_resolution(image_size, pinpoints)
    return best_h // crop_size, best_w // crop_size


def unpad_window(image_size: Size, feature_size: Size) -> tuple[int, int, int, int]:
    """Rows/cols of a stitched feature map that show the image, not the black padding.

    Returns (top, bottom, left, right) slice bounds on a map of ``feature_size`` = (rows*T, cols*T).
    The new side is ``int(round(x, 7))`` as in transformers: the 7-digit rounding absorbs float
    noise such as 26.999999999 that would otherwise truncate to 26.
    """
    height, width = image_size
    feat_h, feat_w = feature_size
    if width / height > feat_w / feat_h:
        new_h = int(round(height * (feat_w / width), 7))
        pad = (feat_h - new_h) // 2
        return pad, feat_h - pad, 0, feat_w
    new_w = int(round(width * (feat_h / height), 7))
    pad = (feat_w - new_w) // 2
    return 0, feat_h, pad, feat_w - pad


def unpadded_size(image_size: Size, feature_size: Size) -> Size:
    top, bottom, left, right = unpad_window(image_size, feature_size)
    return bottom - top, right - left


def reduced_size(size: Size, tokens_per_side: int, max_grids: int | None, margin: float = 1.1) -> Size:
    """Higher AnyRes thresholding (``anyres_max_N``): shrink a map that holds too many tokens.

    ratio = sqrt(h*w / (N * T*T)); if ratio > margin the map is resized to
    (int(h // ratio), int(w // ratio)). Otherwise, or with ``max_grids=None``, it is unchanged.
    """
    if max_grids is None:
        return size
    height, width = size
    ratio = math.sqrt(height * width / (max_grids * tokens_per_side**2))
    if ratio > margin:
        return int(height // ratio), int(width // ratio)
    return size


def pooled_side(side: int, factor: int) -> int:
    """Side of a map after pooling by ``factor`` (bilinear to ceil(side / factor), as OneVision)."""
    return math.ceil(side / factor)


def newline_count(layout: str, rows: int, frames: int = 1) -> int:
    """Newline vectors that a feature map gets under a layout.

    ``row``: one per row (rows counted over all frames); ``frame``: one per frame; ``image`` and
    ``video``: one at the end; ``none``: zero.
    """
    if layout == "row":
        return rows * frames
    if layout == "frame":
        return frames
    if layout in ("image", "video"):
        return 1
    if layout == "none":
        return 0
    raise ValueError(f"newline layout {layout!r}: expected one of row, frame, image, video, none")
