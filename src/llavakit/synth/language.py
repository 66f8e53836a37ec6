"""Words for scenes: object phrases, captions and detailed descriptions.

The grammar is deliberately tiny and regular (one template per kind of sentence) because the
language model trained on this world learns nothing but this text.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import vocab
from .scene import Scene, SceneObject, horizontal_relation, position_word, separated, vertical_relation

DETAIL_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Describe the following image in detail.",
    "Give a detailed description of the image.",
    "What do you see in the image? Describe it in detail.",
)
CAPTION_PROMPT = "Describe the image briefly."


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "?")) else ".")


def join_words(items: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def object_phrase(obj: SceneObject, size: bool = True) -> str:
    return f"{obj.size} {obj.name}" if size else obj.name


def count_phrase(n: int, noun: str = "object") -> str:
    return f"{vocab.number_word(n)} {noun if n == 1 else vocab.plural(noun)}"


def there_are(n: int, noun: str = "object") -> str:
    return f"there {'is' if n == 1 else 'are'} {count_phrase(n, noun)}"


def placed_phrase(obj: SceneObject, side: int) -> str:
    return f"{with_article(object_phrase(obj))} {vocab.POSITIONS[position_word(obj, side)]}"


def captions(scene: Scene) -> list[str]:
    """Three short captions: a list, a counted list, and a list with positions."""
    listed = join_words([with_article(object_phrase(o)) for o in scene.objects])
    counted = f"{there_are(len(scene.objects))} in the image: {listed}"
    placed = join_words([placed_phrase(o, scene.side) for o in scene.objects])
    return [sentence(listed), sentence(counted), sentence(placed)]


def relation_sentence(a: SceneObject, b: SceneObject, side: int) -> str | None:
    """ "The red circle is to the left of the blue square and above it." or None if too close."""
    parts = []
    if separated(a, b, 0, side):
        parts.append(f"to the {horizontal_relation(a, b)} of the {b.name}")
    if separated(a, b, 1, side):
        parts.append(f"{vertical_relation(a, b)} {'it' if parts else 'the ' + b.name}")
    return sentence(f"the {a.name} is {' and '.join(parts)}") if parts else None


def detailed_description(scene: Scene) -> str:
    lines = [sentence(f"{there_are(len(scene.objects))} in the image")]
    for obj in scene.objects:
        lines.append(
            sentence(f"{with_article(object_phrase(obj))} is {vocab.POSITIONS[position_word(obj, scene.side)]}")
        )
    if len(scene.objects) >= 2:
        relation = relation_sentence(scene.objects[0], scene.objects[1], scene.side)
        if relation:
            lines.append(relation)
    return " ".join(lines)
