"""The wording of the scored questions, as data: for each kind of question a list of phrasings,
LLaVA-style instruction lists. The first phrasing of each list is the one every training sample
and the `test` and `dev` splits ask; the others are held out of training and asked only by the
`test_paraphrase` split, on the test scenes. Training and evaluation share this module, so
training asks exactly what evaluation asks.

Changing any phrasing (or adding one) changes what a synth eval task asks: bump that task's
`version` in its task YAML (docs/evaluation.md); tests/test_eval_versions.py pins each task's
phrasings to its version.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from llavakit.evaluation.text import REASONED_MARKER

from .scene import SceneObject, horizontal_relation, vertical_relation

# Every held-out phrasing keeps the training phrasing's answer format (the same post-prompt and the
# same answer words), so a model trained on the first one could answer it.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "color_of_object": (
        "What color is the object? Answer with one word.",
        "Which color is the object? Answer with one word.",
        "What is the color of the object? Answer with one word.",
    ),
    "color_of_shape": (
        "What color is the {shape}? Answer with one word.",
        "Which color is the {shape}? Answer with one word.",
        "What is the color of the {shape}? Answer with one word.",
    ),
    "shape_of_object": (
        "What shape is the object? Answer with one word.",
        "Which shape is the object? Answer with one word.",
        "What is the shape of the object? Answer with one word.",
    ),
    "shape_of_color": (
        "What shape is the {color} object? Answer with one word.",
        "Which shape is the {color} object? Answer with one word.",
        "What is the shape of the {color} object? Answer with one word.",
    ),
    "count": (
        "How many objects are there? Answer with a number.",
        "How many objects are in the image? Answer with a number.",
        "What is the number of objects? Answer with a number.",
    ),
    "relation_horizontal": (
        "Is the {a} left or right of the {b}? Name each side first.",
        "Is the {a} to the left or to the right of the {b}? Name each side first.",
        "Compared with the {b}, is the {a} left or right? Name each side first.",
    ),
    "relation_vertical": (
        "Is the {a} above or below the {b}? Name each side first.",
        "Is the {a} located above or below the {b}? Name each side first.",
        "Compared with the {b}, is the {a} above or below? Name each side first.",
    ),
    "hires_letter": (
        "What letter is written in the image? Answer with one letter.",
        "Which letter is written in the image? Answer with one letter.",
        "What letter does the image show? Answer with one letter.",
    ),
    "hires_tiny_color": (
        "What color is the tiny object? Answer with one word.",
        "Which color is the tiny object? Answer with one word.",
        "What is the color of the tiny object? Answer with one word.",
    ),
    "spot_difference_interleaved": (
        "Which shape changed or disappeared in image 2? Answer with one word.",
        "In image 2, which shape changed or disappeared? Answer with one word.",
        "Which shape is changed or missing in image 2? Answer with one word.",
    ),
    "spot_difference_front": (
        "Which shape changed or disappeared in the second image? Answer with one word.",
        "In the second image, which shape changed or disappeared? Answer with one word.",
        "Which shape is changed or missing in the second image? Answer with one word.",
    ),
    "which_image": (
        "Which image has {target}? Answer first or second.",
        "Which image contains {target}? Answer first or second.",
        "In which image is there {target}? Answer first or second.",
    ),
    "multiview_count_interleaved": (
        "How many objects are in the scene? Answer with a number.",
        "How many objects does the scene contain? Answer with a number.",
        "What is the number of objects in the scene? Answer with a number.",
    ),
    "multiview_count_front": (
        "The images show one scene from different views. How many objects are in the scene? Answer with a number.",
        "The images show one scene from different views. How many objects does the scene contain? "
        "Answer with a number.",
        "These are views of one scene. What is the number of objects in the scene? Answer with a number.",
    ),
    "multiview_hidden_interleaved": (
        "What color is the object hidden in view {view}? Answer with one word.",
        "Which color is the object that is hidden in view {view}? Answer with one word.",
        "What is the color of the object hidden in view {view}? Answer with one word.",
    ),
    "multiview_hidden_front": (
        "The images show one scene from different views. What color is the object hidden in the {ordinal} view? "
        "Answer with one word.",
        "The images show one scene from different views. Which color is the object that is hidden in the "
        "{ordinal} view? Answer with one word.",
        "These are views of one scene. What is the color of the object hidden in the {ordinal} view? "
        "Answer with one word.",
    ),
    "video_direction": (
        "Which direction is the {mover} moving? Answer with one word.",
        "In which direction is the {mover} moving? Answer with one word.",
        "Which way does the {mover} move? Answer with one word.",
    ),
}

# The kinds of question each scored synth task asks (what its task version pins).
TASK_PHRASINGS: dict[str, tuple[str, ...]] = {
    "color": ("color_of_object", "color_of_shape"),
    "shape": ("shape_of_object", "shape_of_color"),
    "count": ("count",),
    "position": ("relation_horizontal", "relation_vertical"),
    "hires_detail": ("hires_letter", "hires_tiny_color"),
    "spot_difference": ("spot_difference_interleaved", "spot_difference_front"),
    "which_image": ("which_image",),
    "multiview": ("multiview_count_interleaved", "multiview_count_front", "multiview_hidden_interleaved",
                  "multiview_hidden_front"),
    "video_direction": ("video_direction",),
}

TRAINED = 0  # the variant of the training phrasing (the first of each list)


def phrase(kind: str, variant: int = TRAINED, **slots: str) -> str:
    """The question of ``kind`` in phrasing ``variant``: 0 the trained (first) phrasing; any other
    variant picks one of the held-out phrasings, the same one for the same variant."""
    phrasings = PHRASINGS[kind]
    index = 0 if variant == TRAINED else 1 + (variant - 1) % (len(phrasings) - 1)
    return phrasings[index].format(**slots)


def held_out_variant(task: str, index: int) -> int:
    """The variant a `test_paraphrase` sample asks: fixed per (task, sample), never the trained one,
    and drawn from a hash, not the index, so tasks that alternate question kinds by index (hires
    detail, multiview) still see every held-out phrasing of each kind."""
    return 1 + zlib.crc32(f"{task}:{index}".encode()) % 1_000_003


COUNT_QUESTION = phrase("count")


def color_question(shape: str | None, variant: int = TRAINED) -> str:
    """The colour of the object of this shape (None: of the only object)."""
    return phrase("color_of_object", variant) if shape is None else phrase("color_of_shape", variant, shape=shape)


def shape_question(color: str | None, variant: int = TRAINED) -> str:
    """The shape of the object of this colour (None: of the only object)."""
    return phrase("shape_of_object", variant) if color is None else phrase("shape_of_color", variant, color=color)


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


# The relation questions ask for reasoning ("Name each side first." in every phrasing): each
# object's side of the centre first, then the relation ("red left, blue right, so left."). The
# relation word alone asks the LM to compare two places it never wrote down, which the tiny model
# did not learn; each side named right after the object's colour is a lookup it learns as it learns
# the listings, and the comparison is then text (history: docs/experiments/quickstart-history.md,
# item 27). The eval (`reasoned_accuracy`) scores the words after the last REASONED_MARKER, ", so ".


def relation_question(a_name: str, b_name: str, axis: int, variant: int = TRAINED) -> str:
    """Where object a is against object b: axis 0 left or right, axis 1 above or below."""
    return phrase("relation_horizontal" if axis == 0 else "relation_vertical", variant, a=a_name, b=b_name)


def relation_word(a: SceneObject, b: SceneObject, axis: int) -> str:
    """a against b on ``axis``: left or right (axis 0), above or below (axis 1)."""
    return (horizontal_relation if axis == 0 else vertical_relation)(a, b)


def relation_answer(a: SceneObject, b: SceneObject, axis: int, side: int) -> str:
    """The reasoned answer: each object by its colour and side of the centre, then the relation:
    "red left, blue right, so left."."""
    return (f"{a.color} {side_word(a, axis, side)}, {b.color} {side_word(b, axis, side)}"
            f"{REASONED_MARKER}{relation_word(a, b, axis)}.")


def relation_turn(a: SceneObject, b: SceneObject, axis: int, side: int, variant: int = TRAINED) -> tuple[str, str]:
    """The relation question about a against b on ``axis`` and its reasoned answer (objects of
    different colours: the answer names them by colour)."""
    return relation_question(a.name, b.name, axis, variant), relation_answer(a, b, axis, side)
