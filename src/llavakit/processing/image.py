"""Pixels: opening images safely, AnyRes tiling, padding to square, normalisation.

Resizing uses PIL on uint8 RGB images, as transformers' PIL image processors do, so our pixel
values are bit-identical to theirs. Normalisation is a 256-entry lookup table per channel built
with the same float operations (uint8 -> float64 * 1/255 -> float32, then (x - mean) / std in
float32), which gives identical values for a fraction of the arithmetic.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from llavakit import geometry
from llavakit.config import VisualConfig
from llavakit.errors import MediaError
from llavakit.layout import VisualItem

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def open_image(source: str | Path | bytes | Image.Image, max_pixels: int, name: str | None = None) -> Image.Image:
    """Open, check and decode an image to RGB; every failure is a MediaError naming the image.

    The pixel limit is checked on the header, before decoding, so a decompression bomb costs
    nothing. Transparency is composited onto white, as transformers does.
    """
    where = str(source) if isinstance(source, (str, Path)) else None
    label = f"{name} ({where})" if name and where else (name or where or type(source).__name__)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            raw = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
            if isinstance(raw, Path) and not raw.is_file():
                raise MediaError(f"image {label}: file not found")
            image = Image.open(raw)
        except (UnidentifiedImageError, OSError) as err:
            raise MediaError(f"image {label}: not a readable image ({err})") from None
        except Image.DecompressionBombError as err:  # PIL's own guard fires before ours on huge headers
            raise MediaError(f"image {label}: refused as a decompression bomb ({err})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise MediaError(f"image {label}: has zero size {width}x{height}")
    if width * height > max_pixels:
        raise MediaError(f"image {label}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    try:
        previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"image {label}: truncated or corrupt ({err})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resize(image: Image.Image, size: tuple[int, int], resample: str) -> Image.Image:
    """Resize to (height, width); PIL returns a copy when the size is unchanged."""
    height, width = size
    return image.resize((width, height), resample=_RESAMPLE[resample])


def pad_to(image: Image.Image, canvas: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    """Paste centered on a (height, width) canvas of ``color``."""
    top, left = geometry.paste_offset((image.height, image.width), canvas)
    out = Image.new("RGB", (canvas[1], canvas[0]), color)
    out.paste(image, (left, top))
    return out


def anyres_views(image: Image.Image, item: VisualItem, visual: VisualConfig) -> list[Image.Image]:
    """Base view (whole image squashed to one crop) then the grid crops, row-major."""
    crop = visual.crop_size
    canvas = (item.grid[0] * crop, item.grid[1] * crop)
    fitted = resize(image, geometry.fit_inside((image.height, image.width), canvas), visual.resample)
    padded = pad_to(fitted, canvas, (0, 0, 0))
    crops = [
        padded.crop((col * crop, row * crop, (col + 1) * crop, (row + 1) * crop))
        for row in range(item.grid[0])
        for col in range(item.grid[1])
    ]
    return [resize(image, (crop, crop), visual.resample), *crops]


def shortest_edge_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at ``short_side``; the long side truncated, as CLIP does."""
    height, width = size
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if height <= width else (new_long, short_side)


def center_crop(image: Image.Image, side: int) -> Image.Image:
    top, left = (image.height - side) // 2, (image.width - side) // 2
    return image.crop((left, top, left + side, top + side))


def single_view(image: Image.Image, visual: VisualConfig, mode: str) -> Image.Image:
    """One crop: pad to a square with the mean colour (Interleave / OneVision), squash, or
    resize the short side and cut the centre (CLIP / LLaVA-1.5 in transformers)."""
    crop = visual.crop_size
    if mode == "resize_crop":
        resized = resize(image, shortest_edge_size((image.height, image.width), crop), visual.resample)
        return center_crop(resized, crop)
    if mode == "pad_square":
        side = max(image.width, image.height)
        mean_color = tuple(int(m * 255) for m in visual.image_mean)
        image = pad_to(image, (side, side), mean_color)
    return resize(image, (crop, crop), visual.resample)


def views_for(image: Image.Image, item: VisualItem, visual: VisualConfig, multi_image: bool) -> list[Image.Image]:
    if item.kind == "anyres":
        return anyres_views(image, item, visual)
    mode = visual.multi_image_mode if multi_image else visual.image_mode
    return [single_view(image, visual, mode)]


@lru_cache(maxsize=16)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32 table: value v of channel c -> normalised pixel, with the reference's arithmetic."""
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean32, std32 = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)
    return ((levels[None, :] - mean32[:, None]) / std32[:, None]).astype(np.float32)


def normalize(views: list[Image.Image], visual: VisualConfig) -> np.ndarray:
    """Stack RGB views into a float32 (N, 3, H, W) array of normalised pixels."""
    table = _lookup_table(tuple(visual.image_mean), tuple(visual.image_std))
    stacked = np.stack([np.asarray(view, dtype=np.uint8) for view in views])  # (N, H, W, 3)
    channels_first = stacked.transpose(0, 3, 1, 2)
    out = np.empty(channels_first.shape, dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], channels_first[:, channel], out=out[:, channel])
    return out
