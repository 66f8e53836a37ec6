"""Drawing flat scenes with PIL: hard-edged fills, so every object pixel is exactly its colour."""

from __future__ import annotations

from PIL import Image, ImageDraw

from . import vocab
from .scene import Scene, SceneObject


def draw_scene(scene: Scene, background: tuple[int, int, int] = vocab.BACKGROUND) -> Image.Image:
    image = Image.new("RGB", (scene.side, scene.side), background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj)
    return image


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    fill = vocab.COLORS[obj.color]
    x1, y1, x2, y2 = obj.box
    right, bottom = x2 - 1, y2 - 1  # PIL boxes are inclusive
    cx, cy = (x1 + right) / 2, (y1 + bottom) / 2
    if obj.shape == "circle":
        draw.ellipse((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, y1), (right, bottom), (x1, bottom)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, y1), (right, cy), (cx, bottom), (x1, cy)], fill=fill)
    elif obj.shape == "cross":
        arm = max(1, (x2 - x1) // 3)
        draw.rectangle((x1 + arm, y1, right - arm, bottom), fill=fill)
        draw.rectangle((x1, y1 + arm, right, bottom - arm), fill=fill)
    elif obj.shape == "letter":
        draw_glyph(draw, obj)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def draw_glyph(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    """A 5x7 bitmap letter filling the object's box, one square cell per glyph pixel."""
    x1, y1, x2, _ = obj.box
    cell = (x2 - x1) // 5
    fill = vocab.COLORS[obj.color]
    for row, line in enumerate(vocab.GLYPHS[obj.spec.letter]):
        for col, mark in enumerate(line):
            if mark == "#":
                left, top = x1 + col * cell, y1 + row * cell
                draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=fill)
