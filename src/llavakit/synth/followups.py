"""Follow-up questions about a training scene, so one image carries several answers.

The eval splits ask one question per image. Training images are the costly part of a sample
(over a hundred visual tokens against a dozen text tokens), so each single-image training sample
asks a few more short-answer questions about the same scene, worded as the eval questions are,
the way LLaVA's conversation data asks several questions about one image.
"""

from __future__ import annotations

import numpy as np

from .scene import Scene, horizontal_relation, separated, vertical_relation
from .task import A_NUMBER, ONE_WORD


def candidate_pairs(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) the eval tasks could ask about this scene."""
    objects = scene.objects
    alone = len(objects) == 1
    pairs = []
    for obj in objects:
        if sum(o.shape == obj.shape for o in objects) == 1:
            subject = "the object" if alone else f"the {obj.shape}"
            pairs.append((f"What color is {subject}? {ONE_WORD}", obj.color))
        if sum(o.color == obj.color for o in objects) == 1:
            subject = "the object" if alone else f"the {obj.color} object"
            pairs.append((f"What shape is {subject}? {ONE_WORD}", obj.shape))
    pairs.append((f"How many objects are there? {A_NUMBER}", str(len(objects))))
    names_unique = len({o.name for o in objects}) == len(objects)
    for a in objects if names_unique else ():
        for b in objects:
            if a is b:
                continue
            if separated(a, b, 0, scene.side):
                pairs.append((f"Is the {a.name} left or right of the {b.name}? {ONE_WORD}", horizontal_relation(a, b)))
            if separated(a, b, 1, scene.side):
                pairs.append((f"Is the {a.name} above or below the {b.name}? {ONE_WORD}", vertical_relation(a, b)))
    return pairs


def follow_up_pairs(scene: Scene, rng: np.random.Generator, limit: int, asked: str) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct questions about the scene, in random order, never ``asked`` again."""
    pool = [pair for pair in candidate_pairs(scene) if pair[0] != asked]
    order = rng.permutation(len(pool))
    return [pool[int(i)] for i in order[:limit]]
