"""Follow-up questions about a training scene, so one image carries several answers.

The eval splits ask one question per image. Training images are the costly part of a sample
(over a hundred visual tokens against a dozen text tokens), so each single-image training sample
asks a few more short-answer questions about the same scene, worded as the eval questions are,
the way LLaVA's conversation data asks several questions about one image.
"""

from __future__ import annotations

import numpy as np

from .questions import COUNT_QUESTION, color_question, relation_turn, shape_question
from .scene import Scene, separated


def candidate_pairs(scene: Scene) -> list[tuple[str, str, str]]:
    """Every (kind, question, answer) the eval tasks could ask about this scene; kind is color,
    shape, count or relation."""
    objects = scene.objects
    alone = len(objects) == 1
    pairs = []
    for obj in objects:
        if sum(o.shape == obj.shape for o in objects) == 1:
            pairs.append(("color", color_question(None if alone else obj.shape), obj.color))
        if sum(o.color == obj.color for o in objects) == 1:
            pairs.append(("shape", shape_question(None if alone else obj.color), obj.shape))
    pairs.append(("count", COUNT_QUESTION, str(len(objects))))
    if len({o.color for o in objects}) < len(objects):
        return pairs  # a relation's reasoned answer names each object by its colour alone
    for a in objects:
        for b in objects:
            for axis in (0, 1):
                if a is not b and separated(a, b, axis, scene.side):
                    pairs.append(("relation", *relation_turn(a, b, axis, scene.side)))
    return pairs


def follow_up_pairs(scene: Scene, rng: np.random.Generator, limit: int, asked: str) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct questions about the scene, never ``asked`` again, taken from each
    kind in turn (kinds in random order, questions in random order within a kind).

    Taking kinds in turn keeps the kinds balanced: drawn from the pool as a whole, relations would
    take most follow-ups, since a scene of n objects has up to 2n(n-1) of them against n colours.
    """
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for kind, question, answer in candidate_pairs(scene):
        if question != asked:
            by_kind.setdefault(kind, []).append((question, answer))
    queues = [[group[int(i)] for i in rng.permutation(len(group))] for group in by_kind.values()]
    queues = [queues[int(i)] for i in rng.permutation(len(queues))]
    picked: list[tuple[str, str]] = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked
