"""Short videos: one object sliding in a straight line past static ones, encoded as MP4 by PyAV."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from .render import draw_scene
from .scene import (
    Scene,
    SceneObject,
    Spec,
    box_size,
    corner_in_cell,
    distinct_specs,
    grid_cell,
    place,
)

STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TRAVEL = 0.45  # how far the mover goes over the whole clip, as a fraction of the side


@dataclass(frozen=True)
class MovingScene:
    still: Scene  # the objects that do not move
    mover: Spec
    start: tuple[int, int]  # top-left corner of the mover in the first frame
    direction: str
    travel: int  # pixels covered from the first to the last frame

    def signature(self) -> str:
        return repr(self)

    def mover_box(self, frame: int, frames: int) -> tuple[int, int, int, int]:
        w, h = box_size(self.mover, self.still.side)
        dx, dy = STEP[self.direction]
        shift = round(self.travel * frame / (frames - 1))
        x1, y1 = self.start[0] + dx * shift, self.start[1] + dy * shift
        return x1, y1, x1 + w, y1 + h

    def frame_scene(self, frame: int, frames: int) -> Scene:
        moving = SceneObject(self.mover, self.mover_box(frame, frames))
        return Scene(self.still.side, self.still.objects + (moving,))


def sample_moving_scene(
    rng: np.random.Generator, side: int, direction: str, n_still: int, grid: int = 0
) -> MovingScene | None:
    """A mover whose whole path stays on the canvas, and still objects clear of that path.

    With `grid` > 0 (see scene.place) the mover starts inside a grid cell and moves a whole number
    of cells, so its first and last frames are grid-aligned like every still image.
    """
    specs = distinct_specs(rng, n_still + 1, unique=("color",))
    mover, still_specs = specs[0], specs[1:]
    w, h = box_size(mover, side)
    dx, dy = STEP[direction]
    if grid:
        cell = grid_cell(max(w, h), grid)
        cells = side // cell
        moves = max(1, min(cells - 1, round(TRAVEL * side / cell)))
        travel = moves * cell

        # along the motion, only cells from which the whole path stays on the canvas
        def starts(d: int) -> range:
            return range(moves if d < 0 else 0, cells - (moves if d > 0 else 0))

        start = (corner_in_cell(rng, starts(dx), cell, w), corner_in_cell(rng, starts(dy), cell, h))
        sx, sy = start[0] - (travel if dx < 0 else 0), start[1] - (travel if dy < 0 else 0)
    else:
        travel = round(TRAVEL * side)
        # The swept box must fit: choose its top-left corner, then derive the start.
        sx = int(rng.integers(1, side - (w + abs(dx) * travel)))
        sy = int(rng.integers(1, side - (h + abs(dy) * travel)))
        start = (sx + (travel if dx < 0 else 0), sy + (travel if dy < 0 else 0))
    swept = (sx, sy, sx + w + abs(dx) * travel, sy + h + abs(dy) * travel)
    still = place(rng, still_specs, side, avoid=[swept], grid=grid)
    if still is None:
        return None
    return MovingScene(still, mover, start, direction, travel)


def render_frames(scene: MovingScene, frames: int) -> list[Image.Image]:
    return [draw_scene(scene.frame_scene(t, frames)) for t in range(frames)]


@functools.lru_cache(maxsize=1)
def video_codec() -> str:
    """libx264 when this PyAV build has it, else MPEG-4 part 2 (always built in)."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - PyAV raises several types for a missing encoder
        return "mpeg4"


def encode_mp4(frames: Sequence[Image.Image], fps: int) -> bytes:
    """Encode RGB frames as yuv420p MP4 in memory; the same frames give the same bytes."""
    codec = video_codec()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        # Near-lossless: tiny objects must keep their colour through chroma subsampling.
        # No macroblock-tree lookahead: with it, libx264 sometimes encoded the same frames to other
        # bytes once the process's memory had changed, so the world differed from run to run.
        x264 = {"crf": "12", "preset": "veryfast", "x264-params": "mbtree=0:rc-lookahead=0"}
        stream.options = x264 if codec == "libx264" else {"qscale": "2"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_mp4(path) -> list[np.ndarray]:
    """All frames of a video as (H, W, 3) uint8 arrays."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
