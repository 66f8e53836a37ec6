"""3D-ish multi-view scenes: solids on a ground plane seen by a camera circling the scene.

Solids are drawn far-to-near (painter's algorithm) with a lighter top and a darker side, so
nearer solids occlude farther ones. The same drawing into an id buffer tells which solid owns
each pixel, which is how the generator proves a solid is hidden in one view and seen in another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import vocab

RADIUS = {"small": 0.2, "large": 0.32}  # ground units
SCENE_RADIUS = 0.85  # solids stand inside this disk around the origin
CAMERA_DISTANCE = 3.0
CAMERA_HEIGHT = 1.2
HORIZON = 0.2  # horizon line, as a fraction of the image height
FOCAL = 0.95  # focal length, as a fraction of the image side


@dataclass(frozen=True)
class Solid:
    kind: str  # a vocab.SOLIDS entry
    color: str
    size: str
    x: float
    z: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def radius(self) -> float:
        return RADIUS[self.size]


@dataclass(frozen=True)
class SolidScene:
    solids: tuple[Solid, ...]
    yaws: tuple[float, ...]  # one camera angle per view, degrees

    def signature(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class Camera:
    yaw: float
    side: int

    def to_view(self, x: float, z: float) -> tuple[float, float]:
        """Ground point -> (sideways offset, depth from camera)."""
        t = math.radians(self.yaw)
        return x * math.cos(t) - z * math.sin(t), CAMERA_DISTANCE + x * math.sin(t) + z * math.cos(t)

    def project(self, across: float, height: float, depth: float) -> tuple[float, float]:
        f = FOCAL * self.side
        return self.side / 2 + f * across / depth, HORIZON * self.side + f * (CAMERA_HEIGHT - height) / depth


def shade(color: str, part: str) -> tuple[int, int, int]:
    base = np.array(vocab.COLORS[color], dtype=float)
    target = {"base": base, "light": base + 0.4 * (255 - base), "dark": base * 0.75}[part]
    return tuple(int(round(v)) for v in target)


Paint = Callable[[Solid, str], object]  # (solid, part) -> fill for PIL


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def draw_solid(draw: ImageDraw.ImageDraw, solid: Solid, camera: Camera, paint: Paint) -> None:
    across, depth = camera.to_view(solid.x, solid.z)
    r = solid.radius
    f = FOCAL * camera.side
    rx = f * r / depth  # screen half-width at the solid's depth

    def ground_ry(height: float) -> float:  # screen half-height of a horizontal disk
        return (camera.project(across, height, depth - r)[1] - camera.project(across, height, depth + r)[1]) / 2

    if solid.kind == "sphere":
        cx, cy = camera.project(across, r, depth)
        _ellipse(draw, cx, cy, rx, rx, paint(solid, "base"))
        _ellipse(draw, cx - 0.3 * rx, cy - 0.3 * rx, 0.35 * rx, 0.35 * rx, paint(solid, "light"))
    elif solid.kind == "cube":
        s = 0.85 * r
        near, far = depth - s, depth + s
        corners_top = [camera.project(across + dx, 2 * s, d) for dx, d in ((-s, near), (s, near), (s, far), (-s, far))]
        draw.polygon(corners_top, fill=paint(solid, "light"))
        x1, y1 = camera.project(across - s, 2 * s, near)
        x2, y2 = camera.project(across + s, 0.0, near)
        draw.rectangle((x1, y1, x2, y2), fill=paint(solid, "base"))
    elif solid.kind == "cylinder":
        h = 1.6 * r
        cx, base_y = camera.project(across, 0.0, depth)
        _, top_y = camera.project(across, h, depth)
        _ellipse(draw, cx, base_y, rx, ground_ry(0.0), paint(solid, "base"))
        draw.rectangle((cx - rx, top_y, cx + rx, base_y), fill=paint(solid, "base"))
        _ellipse(draw, cx, top_y, rx, ground_ry(h), paint(solid, "light"))
    elif solid.kind == "cone":
        h = 2.2 * r
        cx, base_y = camera.project(across, 0.0, depth)
        apex = camera.project(across, h, depth)
        _ellipse(draw, cx, base_y, rx, ground_ry(0.0), paint(solid, "dark"))
        draw.polygon([(cx - rx, base_y), apex, (cx, base_y)], fill=paint(solid, "base"))
        draw.polygon([(cx, base_y), apex, (cx + rx, base_y)], fill=paint(solid, "dark"))
    else:
        raise ValueError(f"unknown solid {solid.kind!r}")


def far_to_near(scene: SolidScene, camera: Camera) -> list[tuple[int, Solid]]:
    return sorted(enumerate(scene.solids), key=lambda item: -camera.to_view(item[1].x, item[1].z)[1])


def render_view(scene: SolidScene, view: int, side: int) -> Image.Image:
    camera = Camera(scene.yaws[view], side)
    image = Image.new("RGB", (side, side), vocab.SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, round(HORIZON * side), side, side), fill=vocab.GROUND)
    for _, solid in far_to_near(scene, camera):
        draw_solid(draw, solid, camera, lambda s, part: shade(s.color, part))
    return image


def visible_pixels(scene: SolidScene, view: int, side: int) -> list[int]:
    """How many pixels of each solid are visible in a view (id-buffer rendering)."""
    camera = Camera(scene.yaws[view], side)
    ids = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(ids)
    for index, solid in far_to_near(scene, camera):
        draw_solid(draw, solid, camera, lambda s, part, value=index + 1: value)
    counts = np.bincount(np.asarray(ids).ravel(), minlength=len(scene.solids) + 1)
    return [int(c) for c in counts[1:]]


def on_ground(x: float, z: float) -> bool:
    return x * x + z * z <= SCENE_RADIUS**2


def clear_of(solids: list[Solid], x: float, z: float, radius: float, gap: float = 0.08) -> bool:
    return all(math.hypot(s.x - x, s.z - z) >= s.radius + radius + gap for s in solids)


MIN_VISIBLE_PX = 8  # a solid "is seen" in a view when at least this many of its pixels show


def _random_ground_point(rng: np.random.Generator) -> tuple[float, float]:
    while True:
        x, z = rng.uniform(-SCENE_RADIUS, SCENE_RADIUS, size=2)
        if on_ground(x, z):
            return float(x), float(z)


def _view_yaws(rng: np.random.Generator, n_views: int) -> tuple[float, ...]:
    """View 0 looks along +z; the others circle the scene, evenly spaced with some jitter."""
    step = 360.0 / n_views
    jitter = step / 8
    return (0.0,) + tuple(round(k * step + float(rng.uniform(-jitter, jitter)), 1) for k in range(1, n_views))


def sample_hidden_scene(
    rng: np.random.Generator,
    n: int,
    n_views: int,
    side: int,
    hidden_color: str | None = None,
    hidden_view: int = 0,
) -> tuple[SolidScene, int] | None:
    """A scene of n solids (distinct colours) where exactly one is hidden in view `hidden_view`
    behind a larger one but seen in another view, and every other solid is seen in that view.

    Returns (scene, index of the hidden solid), or None when this draw missed (caller redraws).
    `hidden_color` fixes the hidden solid's colour (used to balance answers).
    """
    colors = [str(c) for c in rng.permutation(list(vocab.COLORS))]
    if hidden_color is not None:  # colors[1] goes to the hidden solid
        colors.remove(hidden_color)
        colors.insert(1, hidden_color)
    kinds = [str(rng.choice(vocab.SOLIDS)) for _ in range(n)]
    hider_x, hider_z = _random_ground_point(rng)
    hider = Solid(kinds[0], colors[0], "large", hider_x, hider_z)
    # Straight behind the hider as seen from yaw 0 (which looks along +z).
    gap = float(rng.uniform(0.08, 0.4))
    hidden_x = hider_x + float(rng.uniform(-0.04, 0.04))
    hidden_z = hider_z + RADIUS["large"] + RADIUS["small"] + gap
    if not on_ground(hidden_x, hidden_z):
        return None
    solids = [hider, Solid(kinds[1], colors[1], "small", hidden_x, hidden_z)]
    for kind, color in zip(kinds[2:], colors[2:n]):
        size = str(rng.choice(list(RADIUS)))
        for _ in range(50):
            x, z = _random_ground_point(rng)
            if clear_of(solids, x, z, RADIUS[size]):
                solids.append(Solid(kind, color, size, x, z))
                break
        else:
            return None
    order = [int(i) for i in rng.permutation(n)]
    rounded = tuple(Solid(s.kind, s.color, s.size, round(s.x, 3), round(s.z, 3)) for s in (solids[i] for i in order))
    around = _view_yaws(rng, n_views)  # around[0] == 0, the hiding camera
    yaws = tuple(around[(view - hidden_view) % n_views] for view in range(n_views))
    scene = SolidScene(rounded, yaws)
    hidden = order.index(1)
    return (scene, hidden) if _hidden_only_in(scene, hidden, hidden_view, side) else None


def _hidden_only_in(scene: SolidScene, hidden: int, view: int, side: int) -> bool:
    seen = [visible_pixels(scene, v, side) for v in range(len(scene.yaws))]
    others_seen_there = all(seen[view][i] >= MIN_VISIBLE_PX for i in range(len(scene.solids)) if i != hidden)
    hidden_seen_elsewhere = any(seen[v][hidden] >= MIN_VISIBLE_PX for v in range(len(seen)) if v != view)
    return seen[view][hidden] == 0 and others_seen_there and hidden_seen_elsewhere
