"""What every task builder gets (a Context) and returns (a Sample), and the Task registry type.

A builder is a function Context -> Sample. It draws everything from `ctx.rng`, a random stream
of its own keyed by (seed, split, task, index), so a sample never depends on the samples
generated before it, and it asks `ctx.fresh` for scenes so held-out scenes never reach training.
It words its question as `ctx.variant` says (questions.phrase): 0, the trained phrasing, but for
the `test_paraphrase` split.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from .files import atomic_write_bytes, png_bytes
from .scene import Scene, Spec, place
from .settings import WorldSettings
from .video import encode_mp4

IMAGE = "<image>"
VIDEO = "<video>"

S = TypeVar("S")
C = TypeVar("C")
# A draw keeps its object choice this many times before choosing again (Context.fresh_choosing).
DRAWS_PER_CHOICE = 10_000
CHOICES = 100


class NoAdmissibleScene(RuntimeError):
    """Every scene a sample may draw is taken by another split's."""


TEST, DEV = "test", "dev"
HELD_OUT_SPLITS = (TEST, DEV)
# The random stream of each split is keyed by its name; the test split keeps the key it had when it
# was called "eval", so its scenes did not change with the name.
STREAM_KEYS = {TEST: "eval"}


class HeldOut:
    """Scene signatures of the splits drawn so far, so no scene is shared between splits.

    The test split is drawn first and always admitted; training may not draw a test scene (as
    before the dev split existed, so the training files did not change with it). The dev split is
    drawn last and may draw no scene of test or training (nor of dev itself).
    """

    def __init__(self) -> None:
        self._test: set[str] = set()
        self._drawn: set[str] = set()

    def admit(self, split: str, signatures: Sequence[str]) -> bool:
        drawn = set(signatures)
        if split == TEST:
            self._test |= drawn
        elif drawn & (self._drawn if split == DEV else self._test):
            return False
        self._drawn |= drawn
        return True


@dataclass
class Context:
    settings: WorldSettings
    out_dir: Path
    split: str  # "stage1", "train", "test" or "dev"
    task: str
    index: int
    held_out: HeldOut
    variant: int = 0  # the question's phrasing (questions.phrase): 0 the trained one
    write_media: bool = True  # False: the media exist already (a paraphrase of a test sample)

    def __post_init__(self) -> None:
        stream = STREAM_KEYS.get(self.split, self.split)
        key = [self.settings.seed, zlib.crc32(stream.encode()), zlib.crc32(self.task.encode()), self.index]
        self.rng = np.random.default_rng(key)

    @property
    def held_out_split(self) -> bool:
        """A test or dev sample: one question, no annotation, no follow-ups."""
        return self.split in HELD_OUT_SPLITS

    @property
    def stem(self) -> str:
        return f"{self.split}_{self.task}_{self.index:05d}"

    def cycle(self, classes: Sequence[S]) -> S:
        """The answer class of this sample: classes in turn, so every split is balanced."""
        return classes[self.index % len(classes)]

    def fresh(self, draw: Callable[[], S | None], scene_of: Callable[[S], object] = lambda s: s) -> S:
        """Redraw until `draw` gives a result (not None) whose scenes this split may use.

        `scene_of` picks the scene (anything with .signature()), or a tuple of scenes, out of a
        richer result.
        """
        for _ in range(DRAWS_PER_CHOICE):
            result = draw()
            if result is None:
                continue
            scenes = scene_of(result)
            signatures = [s.signature() for s in (scenes if isinstance(scenes, tuple) else (scenes,))]
            if self.held_out.admit(self.split, signatures):
                return result
        raise NoAdmissibleScene(f"{self.stem}: no admissible scene after {DRAWS_PER_CHOICE} draws")

    def fresh_choosing(self, choose: Callable[[], C], draw: Callable[[C], S | None],
                       scene_of: Callable[[S], object] = lambda s: s) -> tuple[C, S]:
        """``fresh(lambda: draw(choice))`` for a ``choice`` made once (how many objects, which
        first object), made again when no scene of it is admissible any more: one object of one
        colour, shape and size has few places on the grid, and the splits drawn before may hold
        them all. The first choice draws exactly as ``fresh`` does, so a world that never ran
        out is unchanged."""
        for _ in range(CHOICES):
            choice = choose()
            try:
                return choice, self.fresh(lambda: draw(choice), scene_of)
            except NoAdmissibleScene:
                continue
        raise NoAdmissibleScene(f"{self.stem}: no admissible scene for {CHOICES} choices of its objects")

    def place(self, specs: Sequence[Spec], side: int | None = None, **options) -> Scene | None:
        """scene.place() on this sample's generator and the world's grid (side: image_side)."""
        return place(self.rng, specs, side or self.settings.image_side, grid=self.settings.grid, **options)

    def save_image(self, image: Image.Image, suffix: str = "") -> str:
        relative = f"images/{self.stem}{suffix}.png"
        if self.write_media:
            atomic_write_bytes(self.out_dir / relative, png_bytes(image), durable=False)  # world.py syncs once
        return relative

    def save_video(self, frames: Sequence[Image.Image]) -> str:
        relative = f"videos/{self.stem}.mp4"
        if self.write_media:
            atomic_write_bytes(self.out_dir / relative, encode_mp4(frames, self.settings.video_fps), durable=False)
        return relative


@dataclass
class Sample:
    conversations: list[dict]
    image: str | list[str] | None = None
    video: str | None = None
    answer: str | None = None  # the short, exact-match answer of a scored question
    options: tuple[str, ...] | None = None  # the answers this very question allows
    image_format: str | None = None  # "interleaved" or "front" for multi-image samples
    annotations: list[dict] = field(default_factory=list)  # single-image scenes, for annotations.jsonl
    description: str | None = None  # a detailed description of the image (stage-1 samples: stage-1.5 data)


@dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[Context], Sample]
    choices: Callable[[WorldSettings], tuple[str, ...]] | None = None  # set for scored (eval) tasks
    train_weight: float = 1.0  # stage-2 samples = weight * settings.n_train


def turns(*pairs: tuple[str, str]) -> list[dict]:
    """[(human, gpt), ...] -> LLaVA conversations."""
    out = []
    for human, gpt in pairs:
        out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


def image_turns(pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """[(human, gpt), ...] about one image -> LLaVA conversations, <image> before the first question."""
    (first_human, first_gpt), *rest = pairs
    return turns((f"{IMAGE}\n{first_human}", first_gpt), *rest)


def single_image_question(question: str, answer: str, image: str, options: Sequence[str],
                          reply: str | None = None) -> Sample:
    """One question about one image; ``reply`` is the assistant's turn when it reasons its way to
    ``answer`` (the scored word), else the answer itself."""
    return Sample(turns((f"{IMAGE}\n{question}", reply or answer)), image=image, answer=answer,
                  options=tuple(options))


def multi_image_prompt(labels: Sequence[str], text: str, image_format: str) -> str:
    """Interleaved: "Image 1: <image>\\nImage 2: <image>\\n<text>"; front: "<image>\\n<image>\\n<text>"."""
    if image_format == "interleaved":
        return "".join(f"{label}: {IMAGE}\n" for label in labels) + text
    return "".join(f"{IMAGE}\n" for _ in labels) + text


def image_format_for(ctx: Context) -> str:
    """The two multi-image placements of LLaVA-NeXT-Interleave in turn, half each; a training sample
    of a one-format world (``train_image_format``) takes that format. Held-out samples always
    alternate, so a model is scored in both."""
    if not ctx.held_out_split and ctx.settings.train_image_format != "both":
        return ctx.settings.train_image_format
    return ("interleaved", "front")[(ctx.index // 2) % 2]
