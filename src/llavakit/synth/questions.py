"""The wording of the scored single-image questions, shared by the eval tasks and the follow-up
questions of training samples, so training asks exactly what evaluation asks."""

from __future__ import annotations

from collections.abc import Sequence

from llavakit.evaluation.text import REASONED_MARKER

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


# Side listings name each object's side of the image's centre with the relation questions' own
# words: axis 0 left or right, axis 1 above or below.
SIDE_WORDS = (("left", "right"), ("above", "below"))


def side_question(axis: int) -> str:
    return f"List the objects by color, {'left or right of' if axis == 0 else 'above or below'} the center."


def side_answer(objects: Sequence[SceneObject], axis: int, side: int) -> str:
    """Each object as "<color> <word>", the word its side of the centre on ``axis``: "orange left,
    cyan right."."""
    return ", ".join(f"{obj.color} {side_word(obj, axis, side)}" for obj in objects) + "."


def side_word(obj: SceneObject, axis: int, side: int) -> str:
    """The object's side of the image's centre on ``axis``."""
    return SIDE_WORDS[axis][int(obj.center[axis] > side / 2)]


# The relation questions ask for reasoning: each object's side of the centre first, then the
# relation ("red left, blue right, so left."). The relation word alone asks the LM to compare two
# places it never wrote down, which the tiny model did not learn; each side named right after the
# object's colour is a lookup it learns as it learns the listings, and the comparison is then
# text (history: docs/experiments/quickstart-history.md, item 27). The eval (`reasoned_accuracy`)
# scores the words after the last REASONED_MARKER, ", so ".
NAME_SIDES = "Name each side first."


def relation_question(a_name: str, b_name: str, axis: int) -> str:
    """Where object a is against object b: axis 0 left or right, axis 1 above or below."""
    if axis == 0:
        return f"Is the {a_name} left or right of the {b_name}? {NAME_SIDES}"
    return f"Is the {a_name} above or below the {b_name}? {NAME_SIDES}"


def relation_word(a: SceneObject, b: SceneObject, axis: int) -> str:
    """a against b on ``axis``: left or right (axis 0), above or below (axis 1)."""
    return (horizontal_relation if axis == 0 else vertical_relation)(a, b)


def relation_answer(a: SceneObject, b: SceneObject, axis: int, side: int) -> str:
    """The reasoned answer: each object by its colour and side of the centre, then the relation:
    "red left, blue right, so left."."""
    return (f"{a.color} {side_word(a, axis, side)}, {b.color} {side_word(b, axis, side)}"
            f"{REASONED_MARKER}{relation_word(a, b, axis)}.")


def relation_turn(a: SceneObject, b: SceneObject, axis: int, side: int) -> tuple[str, str]:
    """The relation question about a against b on ``axis`` and its reasoned answer (objects of
    different colours: the answer names them by colour)."""
    return relation_question(a.name, b.name, axis), relation_answer(a, b, axis, side)
