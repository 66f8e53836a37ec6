"""Follow-up questions about a training scene, so one image carries several answers.

The eval splits ask one question per image. Training images are the costly part of a sample
(over a hundred visual tokens against a dozen text tokens), so each single-image training sample
asks a few more short-answer questions about the same scene, worded as the eval questions are,
the way LLaVA's conversation data asks several questions about one image.
"""

from __future__ import annotations

import numpy as np

from .questions import COUNT_QUESTION, color_question, relation_question, shape_question
from .scene import Scene, horizontal_relation, separated, vertical_relation


def candidate_pairs(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) the eval tasks could ask about this scene."""
    objects = scene.objects
    alone = len(objects) == 1
    pairs = []
    for obj in objects:
        if sum(o.shape == obj.shape for o in objects) == 1:
            pairs.append((color_question(None if alone else obj.shape), obj.color))
        if sum(o.color == obj.color for o in objects) == 1:
            pairs.append((shape_question(None if alone else obj.color), obj.shape))
    pairs.append((COUNT_QUESTION, str(len(objects))))
    if len({o.name for o in objects}) < len(objects):
        return pairs  # a relation needs each object named unambiguously
    relations = ((0, horizontal_relation), (1, vertical_relation))
    for a in objects:
        for b in objects:
            for axis, relation in relations:
                if a is not b and separated(a, b, axis, scene.side):
                    pairs.append((relation_question(a.name, b.name, axis), relation(a, b)))
    return pairs


def follow_up_pairs(scene: Scene, rng: np.random.Generator, limit: int, asked: str) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct questions about the scene, in random order, never ``asked`` again."""
    pool = [pair for pair in candidate_pairs(scene) if pair[0] != asked]
    order = rng.permutation(len(pool))
    return [pool[int(i)] for i in order[:limit]]
