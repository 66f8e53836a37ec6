"""The wording of the scored single-image questions, shared by the eval tasks and the follow-up
questions of training samples, so training asks exactly what evaluation asks."""

from __future__ import annotations

from collections.abc import Sequence

from . import vocab
from .scene import SceneObject, horizontal_relation, vertical_relation
from .task import A_NUMBER, ONE_WORD

COUNT_QUESTION = f"How many objects are there? {A_NUMBER}"


def color_question(shape: str | None) -> str:
    """The colour of the object of this shape (None: of the only object)."""
    return f"What color is {'the object' if shape is None else f'the {shape}'}? {ONE_WORD}"


def shape_question(color: str | None) -> str:
    """The shape of the object of this colour (None: of the only object)."""
    return f"What shape is {'the object' if color is None else f'the {color} object'}? {ONE_WORD}"


def list_question(color_first: bool) -> str:
    return f"List the objects by {'color and shape' if color_first else 'shape and color'}."


def listing_answer(objects: Sequence[SceneObject], color_first: bool) -> str:
    """Each object as "<color> <shape>" (or "<shape> <color>"), in the order given: "blue triangle,
    orange circle."."""
    pairs = ((obj.color, obj.shape) if color_first else (obj.shape, obj.color) for obj in objects)
    return ", ".join(f"{a} {b}" for a, b in pairs) + "."


# Place listings split the scene into this many columns and rows: the quickstart tower's 4x4
# tokens on a 64 px scene (16 px patches), so each column or row is one column or row of tokens.
PLACE_BANDS = 4


def place_question(axis: int) -> str:
    return f"List the objects by color and {'column' if axis == 0 else 'row'}."


def place_answer(objects: Sequence[SceneObject], axis: int, side: int) -> str:
    """Each object as "<color> <n>", n its column (axis 0, counted from the left) or row (axis 1,
    from the top) among PLACE_BANDS, as a number word: "orange three, cyan one."."""
    bands = (min(int(obj.center[axis] * PLACE_BANDS // side), PLACE_BANDS - 1) for obj in objects)
    return ", ".join(f"{obj.color} {vocab.NUMBER_WORDS[band + 1]}" for obj, band in zip(objects, bands)) + "."


def relation_question(a_name: str, b_name: str, axis: int) -> str:
    """Where object a is against object b: axis 0 left or right, axis 1 above or below."""
    if axis == 0:
        return f"Is the {a_name} left or right of the {b_name}? {ONE_WORD}"
    return f"Is the {a_name} above or below the {b_name}? {ONE_WORD}"


def relation_turn(a: SceneObject, b: SceneObject, axis: int) -> tuple[str, str]:
    """The relation question about a against b on ``axis`` and its answer."""
    relation = horizontal_relation if axis == 0 else vertical_relation
    return relation_question(a.name, b.name, axis), relation(a, b)
