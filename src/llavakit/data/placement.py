"""Where the images of a multi-image sample go (LLaVA-NeXT-Interleave, Table 6).

``interleaved``: as written, each placeholder where the user put it. ``front``: all placeholders
first (one per line, at the start of the first user turn) and each old position replaced by a
reference such as "Image 2". ``mixed``: a per-sample choice between the two with probability
``front_ratio`` of ``front``, drawn from (seed, sample position) so it is the same on every process
and every epoch. Single images are left as written: "front" and "interleaved" differ only with
several images.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llavakit.data.records import Sample, Turn

Format = Literal["interleaved", "front"]


class PlacementSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["interleaved", "front", "mixed"] = Field(
        "interleaved", description="where a multi-image sample's images go: interleaved (as written), front (all "
                                   "first) or mixed (a per-sample draw)")
    front_ratio: float = Field(0.5, ge=0.0, le=1.0, description="mixed: the probability of front")
    reference: str = Field("Image {k}", description="what replaces a moved placeholder; {k} counts from 1")
    seed: int = Field(0, description="mixed: seed of the per-sample draw")


def choose_format(settings: PlacementSettings, key: int) -> Format:
    if settings.format != "mixed":
        return settings.format
    draw = np.random.default_rng([settings.seed, key]).random()
    return "front" if draw < settings.front_ratio else "interleaved"


def place_images(sample: Sample, settings: PlacementSettings, key: int) -> Sample:
    """The sample in the chosen format; ``key`` is its position in the dataset."""
    if len(sample.images) < 2 or choose_format(settings, key) == "interleaved" or sample.image_format == "front":
        return sample  # data written in the front format cannot be turned back: keep it as written
    image_token = sample.tokens[0]
    if images_in_front(sample.turns, image_token, len(sample.images)):
        return sample
    return dataclasses.replace(sample, turns=to_front(sample.turns, image_token, settings.reference),
                               image_format="front")


def images_in_front(turns: tuple[Turn, ...], image_token: str, count: int) -> bool:
    first_user = next(t for t in turns if t.role == "user")
    head = first_user.text
    for _ in range(count):
        head = head.lstrip()
        if not head.startswith(image_token):
            return False
        head = head[len(image_token):]
    return True


def to_front(turns: tuple[Turn, ...], image_token: str, reference: str) -> tuple[Turn, ...]:
    """Every placeholder replaced by its reference, then all placeholders before the first user text."""
    counter = iter(range(1, 1 << 30))
    rewritten = []
    for turn in turns:
        pieces = turn.text.split(image_token)
        text = pieces[0] + "".join(reference.format(k=next(counter)) + rest for rest in pieces[1:])
        rewritten.append(Turn(turn.role, text))
    total = next(counter) - 1
    first = next(i for i, t in enumerate(rewritten) if t.role == "user")
    head = f"{image_token}\n" * total
    rewritten[first] = Turn("user", head + rewritten[first].text.lstrip())
    return tuple(rewritten)
