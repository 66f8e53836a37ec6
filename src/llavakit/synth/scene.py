"""Flat scenes: objects with a shape, colour, size and pixel box, and how to place them.

A scene is plain data (frozen dataclasses) so it can be rendered, described in words and
compared by signature (train and eval never share a signature).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from . import vocab

GAP_PX = 2  # free pixels kept between objects so each stays one clean connected blob


@dataclass(frozen=True)
class Spec:
    """What an object is, before it is placed."""

    shape: str  # a vocab.SHAPES entry, or "letter"
    color: str
    size: str  # "small", "large" or "tiny"
    letter: str = ""

    @property
    def name(self) -> str:
        if self.shape == "letter":
            return f"{self.color} letter {self.letter}"
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class SceneObject:
    spec: Spec
    box: tuple[int, int, int, int]  # pixels: x1, y1 inclusive; x2, y2 exclusive

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> str:
        return self.spec.shape

    @property
    def color(self) -> str:
        return self.spec.color

    @property
    def size(self) -> str:
        return self.spec.size

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True)
class Scene:
    side: int
    objects: tuple[SceneObject, ...]

    def signature(self) -> str:
        return repr(self)

    def without(self, index: int) -> Scene:
        return Scene(self.side, self.objects[:index] + self.objects[index + 1 :])

    def recolored(self, index: int, color: str) -> Scene:
        changed = replace(self.objects[index], spec=replace(self.objects[index].spec, color=color))
        return Scene(self.side, self.objects[:index] + (changed,) + self.objects[index + 1 :])


def pick(rng: np.random.Generator, items: Sequence):
    """One item, as its own Python type (numpy's choice would return numpy scalars)."""
    return items[int(rng.integers(len(items)))]


def extent_px(size: str, side: int) -> int:
    return max(3, round(vocab.SIZES[size] * side))


def normalized_box(obj: SceneObject, side: int) -> list[float]:
    return [round(v / side, 3) for v in obj.box]


def position_word(obj: SceneObject, side: int) -> str:
    """The cell of a 3x3 grid that holds the object's centre ("top left", "center", ...)."""
    cx, cy = obj.center
    col = min(2, int(3 * cx / side))
    row = min(2, int(3 * cy / side))
    return ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")[
        3 * row + col
    ]


def random_spec(rng: np.random.Generator, **fixed) -> Spec:
    values = {
        "shape": pick(rng, vocab.SHAPES),
        "color": pick(rng, list(vocab.COLORS)),
        "size": pick(rng, list(vocab.SIZES)),
    }
    values.update(fixed)
    return Spec(**values)


def distinct_specs(
    rng: np.random.Generator, n: int, unique: Iterable[str] = ("name",), first: Sequence[Spec] = ()
) -> list[Spec]:
    """n specs (starting with `first`) in which each attribute listed in `unique` never repeats."""
    unique = tuple(unique)
    specs = list(first)
    while len(specs) < n:
        candidate = random_spec(rng)
        if all(getattr(candidate, key) not in {getattr(s, key) for s in specs} for key in unique):
            specs.append(candidate)
    return specs


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def box_size(spec: Spec, side: int, tiny_px: int = 0, letter_cell: int = 1) -> tuple[int, int]:
    """Width and height in pixels; a letter is its 5x7 glyph with `letter_cell`-pixel cells."""
    if spec.shape == "letter":
        return 5 * letter_cell, 7 * letter_cell
    if spec.size == "tiny":
        return tiny_px, tiny_px
    extent = extent_px(spec.size, side)
    return extent, extent


def grid_cell(extent: int, grid: int) -> int:
    """The side of the grid-aligned cell an object of `extent` px gets: the smallest `grid` * 2^k
    that holds it with a 1 px margin on each side (so neighbours keep GAP_PX apart). Powers of
    two nest: a cell never straddles a larger one, nor a 64 px AnyRes crop of a 256 px image."""
    cell = grid
    while cell < extent + GAP_PX:
        cell *= 2
    return cell


def corner_in_cell(rng: np.random.Generator, cells: range, cell: int, extent: int) -> int:
    """One coordinate of a box's top-left corner inside one of `cells` (cell indices along an
    axis; cells start at multiples of their side), keeping a 1 px margin inside the cell."""
    return int(rng.integers(cells.start, cells.stop)) * cell + 1 + int(rng.integers(cell - extent - GAP_PX + 1))


def _corner(rng: np.random.Generator, side: int, extent: int, grid: int) -> int | None:
    """One coordinate of a box's top-left corner: anywhere on the canvas, or inside a random
    grid cell when `grid` > 0 (None when no cell of the canvas holds the box)."""
    if not grid:
        return int(rng.integers(1, side - extent))
    cell = grid_cell(extent, grid)
    return corner_in_cell(rng, range(side // cell), cell, extent) if cell <= side else None


def place(
    rng: np.random.Generator,
    specs: Sequence[Spec],
    side: int,
    tiny_px: int = 0,
    letter_cell: int = 1,
    avoid: Sequence[tuple[int, int, int, int]] = (),
    tries: int = 60,
    grid: int = 0,
) -> Scene | None:
    """Drop objects at random spots clear of each other and of `avoid`; None when too crowded.

    With `grid` > 0 each object lies inside one cell of a `grid`-px lattice (a larger object in an
    aligned block of cells), so that a vision tower with `grid`-px patches sees it whole in one
    token instead of in pieces spread over two to four.
    """
    placed: list[SceneObject] = []
    taken = list(avoid)
    for spec in specs:
        w, h = box_size(spec, side, tiny_px, letter_cell)
        for _ in range(tries):
            x1, y1 = _corner(rng, side, w, grid), _corner(rng, side, h, grid)
            if x1 is None or y1 is None:
                return None
            box = (x1, y1, x1 + w, y1 + h)
            if not any(_overlaps(box, other, GAP_PX) for other in taken):
                break
        else:
            return None
        placed.append(SceneObject(spec, box))
        taken.append(box)
    return Scene(side, tuple(placed))


def place_until_fits(
    rng: np.random.Generator,
    specs: Sequence[Spec],
    side: int,
    tiny_px: int = 0,
    letter_cell: int = 1,
    grid: int = 0,
) -> Scene:
    """place() with retries: crowding is rare at the default sizes and the retry keeps it seeded."""
    for _ in range(1000):
        scene = place(rng, specs, side, tiny_px, letter_cell, grid=grid)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {len(specs)} objects on a {side}px canvas")


def horizontal_relation(a: SceneObject, b: SceneObject) -> str:
    return "left" if a.center[0] < b.center[0] else "right"


def vertical_relation(a: SceneObject, b: SceneObject) -> str:
    return "above" if a.center[1] < b.center[1] else "below"


def separated(a: SceneObject, b: SceneObject, axis: int, side: int, fraction: float = 0.15) -> bool:
    """True when the centres are far enough apart along `axis` (0 = x, 1 = y) to call a side."""
    return abs(a.center[axis] - b.center[axis]) >= fraction * side
