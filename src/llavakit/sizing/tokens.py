"""Visual tokens per medium at a model's settings, all from ``layout.token_count`` (the one source
of token counts): the single image that takes the most, one image of a multi-image prompt times the
images, a video of the given frames."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llavakit import layout
from llavakit.config import LlavaConfig


@dataclass(frozen=True)
class MediumTokens:
    tokens: int  # placeholders in the prompt: vectors the LLM reads
    crops: int  # images through the vision tower
    size: tuple[int, int] | None = None  # (height, width) of the image, or of a frame
    grid: tuple[int, int] | None = None  # AnyRes (rows, cols) of crops
    count: int = 1  # images of a multi-image sample, frames of a video

    def to_json(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items() if value is not None}


def largest_image(config: LlavaConfig) -> MediumTokens:
    """The single image that becomes the most tokens: for AnyRes, an image of each grid canvas's own
    size (nothing unpadded), the largest count of them; otherwise one crop."""
    visual, side = config.visual, config.tokens_per_side
    sizes = visual.pinpoints() if visual.image_mode == "anyres" else [(visual.crop_size, visual.crop_size)]
    items = [layout.plan_image(visual, tuple(size), multi_image=False) for size in sizes]
    item = max(items, key=lambda i: (layout.token_count(i, visual, side), i.num_crops))
    return MediumTokens(layout.token_count(item, visual, side), item.num_crops, item.media_size,
                        item.grid if item.kind == "anyres" else None)


def multi_image(config: LlavaConfig, images: int) -> MediumTokens:
    """``images`` images in one prompt, each as a multi-image prompt encodes it."""
    visual, side = config.visual, config.tokens_per_side
    crop = (visual.crop_size, visual.crop_size)
    item = layout.plan_image(visual, crop, multi_image=True)
    return MediumTokens(images * layout.token_count(item, visual, side), images * item.num_crops, crop,
                        item.grid if item.kind == "anyres" else None, images)


def video(config: LlavaConfig, frames: int | None = None) -> MediumTokens:
    visual, side = config.visual, config.tokens_per_side
    frames = frames or visual.video_frames
    crop = (visual.crop_size, visual.crop_size)
    item = layout.plan_video(visual, crop, frames)
    return MediumTokens(layout.token_count(item, visual, side), item.num_crops, crop, None, frames)


def visual_tokens(config: LlavaConfig, images: int, frames: int | None, takes_video: bool) -> dict[str, MediumTokens]:
    result = {"largest_image": largest_image(config), "multi_image": multi_image(config, images)}
    if takes_video:
        result["video"] = video(config, frames)
    return result
