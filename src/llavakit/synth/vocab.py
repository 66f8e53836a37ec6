"""The closed vocabulary of the synthetic world.

Everything the world can show or say is listed here, so the tiny tokenizer and language model
trained on it see a small, regular language, and every scored answer is one of a few words.
"""

from __future__ import annotations

# Flat 2D shapes drawn in single-image, multi-image and video scenes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "sphere": "spheres",
    "cube": "cubes",
    "cylinder": "cylinders",
    "cone": "cones",
    "object": "objects",
}

# Saturated hues far apart in RGB, so a colour survives yuv420p video and resizing.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 205, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 210),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Object extent as a fraction of the image side.
# Both fit one 16 px grid cell of a 64 px scene (10 and 14 px; see WorldSettings.grid), so each
# object is one whole token of the quickstart's tower.
SIZES: dict[str, float] = {"small": 0.16, "large": 0.22}
# The tiny object and letter of hires_detail scenes are sized against the *normal* side, so
# they stay below ~1.5 normal pixels once the large image is squashed to the normal size.
TINY_EXTENT_NORMAL_PX = 1.5

# Where an object's centre lies on a 3x3 grid, and how a caption says it.
POSITIONS: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

# Solid shapes of the 3D-ish multi-view scenes.
SOLIDS: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone")
SKY: tuple[int, int, int] = (240, 240, 240)
GROUND: tuple[int, int, int] = (185, 185, 185)

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
ORDINALS: tuple[str, ...] = ("first", "second", "third")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")

# Letters for hires_detail. Words that are also letters ("a", "i") are left out so an answer
# never collides with an English word of the world.
LETTERS: tuple[str, ...] = ("E", "F", "H", "K", "L", "T", "X", "Z")
# 5x7 bitmaps, drawn by us rather than by a font so output is identical across Pillow builds.
GLYPHS: dict[str, tuple[str, ...]] = {
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}


def plural(noun: str) -> str:
    return PLURALS[noun]


def number_word(n: int) -> str:
    return NUMBER_WORDS[n]


def as_dict() -> dict:
    """The vocabulary as written into world.json."""
    return {
        "shapes": list(SHAPES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "background": list(BACKGROUND),
        "sizes": dict(SIZES),
        "positions": list(POSITIONS),
        "solids": list(SOLIDS),
        "directions": list(DIRECTIONS),
        "relations": list(RELATIONS),
        "letters": list(LETTERS),
    }
