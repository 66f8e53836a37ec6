"""Media of a sample: sizes from file headers (no decoding), pixels through the model's processor.

Token counts come from ``llavakit.layout`` and pixels from ``LlavaProcessor``, so the data pipeline
and the model can never disagree on how many placeholder tokens an image or a video needs. Any
failure becomes a DataError naming the sample, its data file and the media file.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from llavakit import layout
from llavakit.data.errors import CORRUPT_MEDIA, MISSING_MEDIA, PLACEHOLDER_MISMATCH
from llavakit.data.records import Embedded, Entry, Sample, Turn
from llavakit.errors import MediaError, PlaceholderError
from llavakit.layout import VisualItem
from llavakit.utils.lru import ByteLRU


@dataclass
class LoadedMedia:
    """Visual items and crops in placeholder order, plus the video's timing when there is one."""

    items: list[VisualItem]
    pixels: list[np.ndarray]  # one (crops, 3, S, S) array per item
    duration: float | None = None
    timestamps: list[float] | None = None


def media_order(sample: Sample) -> list[tuple[str, Path]]:
    """(kind, path) in the order the placeholders appear in the conversation."""
    image_token, video_token = sample.tokens
    text = "".join(t.text for t in sample.turns)
    images = iter(sample.images)
    order, position = [], 0
    while True:
        i, v = text.find(image_token, position), text.find(video_token, position)
        hits = [(p, kind) for p, kind in ((i, "image"), (v, "video")) if p >= 0]
        if not hits:
            return order
        start, kind = min(hits)
        order.append((kind, next(images) if kind == "image" else sample.video))
        position = start + len(image_token if kind == "image" else video_token)


def _media_error(entry: Entry, path: Path | Embedded, err: Exception):
    code = CORRUPT_MEDIA if isinstance(path, Embedded) or path.is_file() else MISSING_MEDIA
    return entry.error(code, str(err), str(path))


def header_size(path: Path | Embedded, kind: str, max_pixels: int) -> tuple[int, int]:
    """(height, width) of an image, or of a video's frames, read from the header only."""
    embedded = isinstance(path, Embedded)
    if not embedded and not path.is_file():
        raise MediaError(f"{kind} {path}: file not found")
    if kind == "video":
        import av  # only video users pay for FFmpeg

        try:
            with av.open(io.BytesIO(path.data) if embedded else str(path)) as container:
                codec = container.streams.video[0].codec_context
                return int(codec.height), int(codec.width)
        except (av.error.FFmpegError, IndexError, ValueError) as err:
            raise MediaError(f"video {path}: cannot read the header ({err})") from None
    try:
        with Image.open(io.BytesIO(path.data) if embedded else path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise MediaError(f"image {path}: not a readable image ({err})") from None
    if width * height > max_pixels:
        raise MediaError(f"image {path}: {width}x{height} pixels exceeds the limit of {max_pixels}")
    return height, width


def check_model_takes(entry: Entry, sample: Sample, processor: Any) -> None:
    """A video sample for a model that takes no video is refused as such (before any file is read)."""
    if sample.video is None:
        return
    try:
        processor.check_takes(["video"], f"video {sample.video}")
    except PlaceholderError as err:
        raise entry.error(PLACEHOLDER_MISMATCH, str(err), str(sample.video)) from None


def planned_items(entry: Entry, sample: Sample, processor: Any) -> list[VisualItem]:
    """Visual items from headers alone: what the token counts will be, without decoding pixels."""
    check_model_takes(entry, sample, processor)
    visual = processor.visual
    multi_image = len(sample.images) > 1
    items = []
    for kind, path in media_order(sample):
        try:
            size = header_size(path, kind, visual.max_image_pixels)
        except MediaError as err:
            raise _media_error(entry, path, err) from None
        if kind == "image":
            items.append(layout.plan_image(visual, size, multi_image))
        else:
            items.append(layout.plan_video(visual, size, visual.video_frames))
    return items


@dataclass(frozen=True)
class DecodedMedium:
    """One image or video after the processor: its visual item, crops and (videos) timing."""

    item: VisualItem
    crops: np.ndarray  # (crops, 3, S, S) float32, read-only when cached
    duration: float | None = None
    timestamps: list[float] | None = None


class MediaCache:
    """Decoded crops kept across epochs, least recently used first out, within a byte budget.

    Decoding and normalising are deterministic, so a medium read again (every epoch of a
    multi-epoch stage) gives the same crops: on the quickstart's 64 px images and 8-frame clips
    that work was a tenth of a stage-2 step. The key holds the file's size and modification time,
    so a file replaced on disk is decoded anew; the cached arrays are read-only, since they are
    shared by every sample that uses the file.
    """

    def __init__(self, max_bytes: int):
        self.store: ByteLRU[DecodedMedium] = ByteLRU(max_bytes, lambda medium: medium.crops.nbytes)
        self.hits = self.misses = 0

    @staticmethod
    def key(kind: str, path: Path | Embedded, multi_image: bool) -> tuple | None:
        if isinstance(path, Embedded):  # no file to stat: the bytes themselves say whether it changed
            return kind, path.name, multi_image, len(path.data), hash(path.data)
        try:
            stat = path.stat()
        except OSError:
            return None  # missing: let the decoder raise its named error
        return kind, str(path), multi_image, stat.st_size, stat.st_mtime_ns

    def get(self, key: tuple | None) -> DecodedMedium | None:
        found = self.store.get(key) if key is not None else None
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return found

    def put(self, key: tuple | None, medium: DecodedMedium) -> None:
        if key is not None:
            medium.crops.flags.writeable = False  # shared by every sample that reads the file
            if not self.store.put(key, medium):  # larger than the whole budget: not kept, not shared
                medium.crops.flags.writeable = True


def decode_medium(kind: str, path: Path | Embedded, multi_image: bool, processor: Any, name: str) -> DecodedMedium:
    source = path.data if isinstance(path, Embedded) else path
    if kind == "image":
        return DecodedMedium(*processor.image_pixels(source, multi_image, name))
    frames = processor.load_video(source, name)
    item, crops = processor.video_pixels(frames.images, name)
    return DecodedMedium(item, crops, frames.duration, frames.timestamps)


def load_media(entry: Entry, sample: Sample, processor: Any, cache: MediaCache | None = None) -> LoadedMedia:
    """Decode every image and video of a sample through the processor, in placeholder order
    (through ``cache`` when given: a file decoded before is not decoded again)."""
    check_model_takes(entry, sample, processor)
    multi_image = len(sample.images) > 1
    loaded = LoadedMedia([], [])
    for position, (kind, path) in enumerate(media_order(sample)):
        name = f"sample {sample.sample_id}, {kind} {position} ({path})"
        key = medium = None
        if cache is not None:
            key = MediaCache.key(kind, path, multi_image)
            medium = cache.get(key)
        if medium is None:
            try:
                medium = decode_medium(kind, path, multi_image, processor, name)
            except (MediaError, PlaceholderError) as err:
                raise _media_error(entry, path, err) from None
            if cache is not None:
                cache.put(key, medium)
        if kind == "video":
            loaded.duration, loaded.timestamps = medium.duration, medium.timestamps
        loaded.items.append(medium.item)
        loaded.pixels.append(medium.crops)
    return loaded


def time_instruction(duration: float, timestamps: list[float]) -> str:
    """LLaVA-Video's time instruction, word for word (the released models were trained on it)."""
    frame_time = ",".join(f"{t:.2f}s" for t in timestamps)
    return (
        f"The video lasts for {duration:.2f} seconds, and {len(timestamps)} frames are uniformly sampled from it. "
        f"These frames are located at {frame_time}.Please answer the following questions related to this video."
    )


def with_time_instruction(sample: Sample, duration: float, timestamps: list[float]) -> Sample:
    """The video placeholder first in its turn, then the time instruction, as LLaVA-Video writes it."""
    video_token = sample.tokens[1]
    instruction = time_instruction(duration, timestamps)
    turns = [
        Turn(t.role, f"{video_token}\n{instruction}\n{t.text.replace(video_token, '')}") if video_token in t.text else t
        for t in sample.turns
    ]
    return dataclasses.replace(sample, turns=tuple(turns))
