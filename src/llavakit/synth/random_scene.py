"""One new random scene, rendered, with its symbolic representation (for chat demos, ReCap tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .records import annotation_record
from .render import draw_scene
from .scene import Scene, distinct_specs, place_until_fits
from .settings import WorldSettings


@dataclass(frozen=True)
class RenderedScene:
    image: Image.Image
    scene: Scene
    annotation: dict  # annotations.jsonl format without "image": width, height, captions, boxes

    def symbolic(self) -> str:
        """The LLaVA "symbolic representation": captions, then one `name: [x1, y1, x2, y2]` per box."""
        lines = list(self.annotation["captions"])
        lines += [f"{box['name']}: [{', '.join(f'{v:.3f}' for v in box['bbox'])}]" for box in self.annotation["boxes"]]
        return "\n".join(lines)


def render_random_scene(
    seed: int = 0, side: int = 64, max_objects: int = 5, grid: int = WorldSettings.grid
) -> RenderedScene:
    """A scene of 1..max_objects distinct objects drawn from `seed` (same seed, same scene), placed
    on the default world's grid so that it looks like the scenes a quickstart model trained on."""
    rng = np.random.default_rng([seed, 7])
    specs = distinct_specs(rng, int(rng.integers(1, max_objects + 1)))
    scene = place_until_fits(rng, specs, side, grid=grid)
    annotation = annotation_record(scene, image="")
    del annotation["image"]
    return RenderedScene(draw_scene(scene), scene, annotation)
