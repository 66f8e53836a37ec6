"""The "symbolic representation" of an image (seed 001): its captions, then one box per line.

``name: [x1, y1, x2, y2]`` with coordinates in [0, 1] and three decimals, the same text that
``llavakit.synth``'s ``RenderedScene.symbolic()`` writes.
"""

from __future__ import annotations

from llavakit.datagen.annotations import Box, ImageAnnotation


def format_box(box: Box) -> str:
    return f"{box.name}: [{', '.join(f'{v:.3f}' for v in box.bbox)}]"


def symbolic_context(annotation: ImageAnnotation) -> str:
    return "\n".join([*annotation.captions, *(format_box(b) for b in annotation.boxes)])
