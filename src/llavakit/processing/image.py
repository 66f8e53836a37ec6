"""Pixels: opening images safely, AnyRes tiling, padding to square, normalisation.

Resizing uses PIL on uint8 RGB images, as transformers' PIL image processors do, so our pixel
values are bit-identical to theirs. The reference rescales in float64 (x * 1/255, then float32) and
normalises in float32 ((x - mean) / std); we do the float32 part with the same operations, in
place, one crop at a time (it stays in cache), and the rescale as float32(x) / 255, which equals the
float64 route for each of the 256 byte values (``_RESCALE_IS_EXACT``; a lookup table otherwise).

Speed (bench/preprocess.py): the grid is cut from one uint8 array of the padded canvas (views, no
copies), an image that already fits its canvas is not resized, and crops are normalised straight
from those views into the preallocated output.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from llavakit import geometry
from llavakit.config import VisualConfig
from llavakit.errors import MediaError
from llavakit.layout import VisualItem

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def open_image(source: str | Path | bytes | Image.Image, max_pixels: int, name: str | None = None) -> Image.Image:
    """Open, check and decode an image to RGB; every failure is a MediaError naming the image.

    The pixel limit is checked on the header, before decoding, so a decompression bomb costs
    nothing. Transparency is composited onto white, as transformers does. A truncated file fails to
    decode because PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, its default: it
    is never set here, since a global toggled around each decode races with the other decoding
    threads (the server's) and with the application's own choice. An application that sets it True
    accepts truncated images everywhere, here too.
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
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"image {label}: truncated or corrupt ({err})") from None
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


def anyres_views(image: Image.Image, item: VisualItem, visual: VisualConfig) -> list[np.ndarray | Image.Image]:
    """Base view (whole image squashed to one crop) then the grid crops, row-major.

    The crops are (crop, crop, 3) uint8 views into one array of the padded canvas.
    """
    crop = visual.crop_size
    canvas = (item.grid[0] * crop, item.grid[1] * crop)
    fit = geometry.fit_inside((image.height, image.width), canvas)
    fitted = image if fit == (image.height, image.width) else resize(image, fit, visual.resample)
    padded = pad_array(np.asarray(fitted), canvas)
    crops = [
        padded[row * crop:(row + 1) * crop, col * crop:(col + 1) * crop]
        for row in range(item.grid[0])
        for col in range(item.grid[1])
    ]
    return [resize(image, (crop, crop), visual.resample), *crops]


def pad_array(pixels: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 pasted centered on a black (height, width, 3) canvas, as ``pad_to`` does."""
    if pixels.shape[:2] == canvas:
        return pixels
    top, left = geometry.paste_offset(pixels.shape[:2], canvas)
    out = np.zeros((*canvas, 3), dtype=np.uint8)
    out[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    return out


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


def views_for(
    image: Image.Image, item: VisualItem, visual: VisualConfig, multi_image: bool
) -> list[np.ndarray | Image.Image]:
    if item.kind == "anyres":
        return anyres_views(image, item, visual)
    mode = visual.multi_image_mode if multi_image else visual.image_mode
    return [single_view(image, visual, mode)]


def _rescale_is_exact() -> bool:
    """float32(x) / 255 in float32 equals the reference's float32(x * (1/255) in float64), for every byte."""
    levels = np.arange(256)
    return bool(np.array_equal(levels.astype(np.float32) / np.float32(255),
                               (levels.astype(np.float64) * (1 / 255)).astype(np.float32)))


_RESCALE_IS_EXACT = _rescale_is_exact()  # True under IEEE-754 arithmetic


@lru_cache(maxsize=16)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32 table: value v of channel c -> normalised pixel, with the reference's arithmetic."""
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean32, std32 = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)
    return ((levels[None, :] - mean32[:, None]) / std32[:, None]).astype(np.float32)


def normalize(views: list[np.ndarray | Image.Image], visual: VisualConfig) -> np.ndarray:
    """RGB views (PIL images or (H, W, 3) uint8 arrays) -> a float32 (N, 3, H, W) array of normalised pixels."""
    arrays = [np.asarray(view, dtype=np.uint8) for view in views]
    out = np.empty((len(arrays), 3, *arrays[0].shape[:2]), dtype=np.float32)
    mean = np.array(visual.image_mean, dtype=np.float32)[:, None, None]
    std = np.array(visual.image_std, dtype=np.float32)[:, None, None]
    for target, pixels in zip(out, arrays):
        _normalize_crop(target, pixels.transpose(2, 0, 1), mean, std, visual)
    return out


def _normalize_crop(out: np.ndarray, pixels: np.ndarray, mean: np.ndarray, std: np.ndarray,
                    visual: VisualConfig) -> None:
    """(3, H, W) uint8 -> ``out`` (3, H, W) float32, in place."""
    if not _RESCALE_IS_EXACT:
        table = _lookup_table(tuple(visual.image_mean), tuple(visual.image_std))
        for channel in range(3):
            np.take(table[channel], pixels[channel], out=out[channel], mode="clip")  # clip: no buffered copy
        return
    np.copyto(out, pixels, casting="unsafe")  # uint8 -> float32 is exact
    np.divide(out, np.float32(255), out=out)
    np.subtract(out, mean, out=out)
    np.divide(out, std, out=out)
