"""Video frames: decode with PyAV, sample N frames uniformly, keep their timestamps."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llavakit.errors import MediaError


@dataclass
class Frames:
    """Sampled frames of one video, with what a time-aware prompt needs."""

    images: list[Image.Image]
    timestamps: list[float]  # seconds, one per sampled frame
    duration: float  # seconds


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame (LLaVA-OneVision)."""
    if total < 1:
        raise ValueError("a video needs at least one frame")
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def read_video(path: str | Path | bytes, num_frames: int) -> Frames:
    """Decode ``num_frames`` uniformly sampled RGB frames; a MediaError names the file on failure.
    ``path`` may be the encoded file's bytes (a video stored inside a data shard)."""
    import av  # imported here: only video users pay for FFmpeg

    if isinstance(path, bytes):
        source, path = io.BytesIO(path), f"({len(path)} bytes in memory)"
    else:
        path = Path(path)
        if not path.is_file():
            raise MediaError(f"video {path}: file not found")
        source = str(path)
    try:
        with av.open(source) as container:
            stream = container.streams.video[0]
            # Count packets rather than trusting the header's frame count, which can be absent or wrong.
            total = sum(1 for packet in container.demux(stream) if packet.size)
            # A clip shorter than the frame budget gives each frame once rather than repeating frames.
            wanted = uniform_indices(total, min(total, num_frames))
            container.seek(0)
            decoded: dict[int, tuple[Image.Image, float]] = {}
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    decoded[index] = (frame.to_image().convert("RGB"), float(frame.time or 0.0))
                if index >= wanted[-1]:
                    break
            duration = float(stream.duration * stream.time_base) if stream.duration else None
    except (av.error.FFmpegError, IndexError, ValueError) as err:
        raise MediaError(f"video {path}: cannot decode ({err})") from None
    missing = sorted(set(wanted) - set(decoded))
    if missing:
        raise MediaError(f"video {path}: truncated, frame {missing[0]} of {total} could not be decoded")
    images = [decoded[i][0] for i in wanted]
    times = [decoded[i][1] for i in wanted]
    return Frames(images, times, duration if duration is not None else times[-1])
