"""Training-only samples: stage-1 captions, multi-turn conversations, detailed descriptions,
reasoning (counting, relative position, comparison) and a few text-only questions.

These mirror the three response types of LLaVA-Instruct (conversation, detailed description,
complex reasoning), written from the scene's symbolic form by templates instead of by an LLM.
"""

from __future__ import annotations

from collections.abc import Callable

from . import vocab
from .language import (
    DETAIL_PROMPTS,
    captions,
    detailed_description,
    join_words,
    object_phrase,
    sentence,
    there_are,
    with_article,
)
from .records import annotation_record
from .render import draw_scene
from .scene import (
    Scene,
    SceneObject,
    distinct_specs,
    horizontal_relation,
    pick,
    position_word,
    random_spec,
    separated,
    vertical_relation,
)
from .task import IMAGE, Context, Sample, Task, image_turns, turns

QA = tuple[str, str]


def _scene(ctx: Context, least: int = 1) -> Scene:
    return ctx.fresh(
        lambda: ctx.place(distinct_specs(ctx.rng, int(ctx.rng.integers(least, ctx.settings.max_objects + 1))))
    )


def _with_image(ctx: Context, scene: Scene, pairs: list[QA]) -> Sample:
    """Save the image, put <image> before the first question, and keep the annotation."""
    image = ctx.save_image(draw_scene(scene))
    return Sample(image_turns(pairs), image=image, annotations=[annotation_record(scene, image)])


def build_stage1_caption(ctx: Context) -> Sample:
    scene = _scene(ctx)
    image = ctx.save_image(draw_scene(scene))
    caption = pick(ctx.rng, captions(scene))
    return Sample(turns((IMAGE, caption)), image=image, annotations=[annotation_record(scene, image)],
                  description=detailed_description(scene))


# ---- conversations -------------------------------------------------------------------------


def conversation_pool(ctx: Context, scene: Scene) -> list[QA]:
    objects = scene.objects
    listed = join_words([with_article(object_phrase(o)) for o in objects])
    pool = [
        ("What objects are in the image?", sentence(f"the image shows {listed}")),
        ("How many objects are there?", sentence(there_are(len(objects)))),
    ]
    for obj in objects:
        pool.append(
            (
                f"Where is the {obj.name}?",
                sentence(f"the {obj.name} is {vocab.POSITIONS[position_word(obj, scene.side)]}"),
            )
        )
        pool.append((f"Is the {obj.name} small or large?", sentence(f"the {obj.name} is {obj.size}")))
        if sum(o.shape == obj.shape for o in objects) == 1:
            pool.append((f"What color is the {obj.shape}?", sentence(f"the {obj.shape} is {obj.color}")))
        if sum(o.color == obj.color for o in objects) == 1:
            pool.append(
                (
                    f"What shape is the {obj.color} object?",
                    sentence(f"the {obj.color} object is {with_article(obj.shape)}"),
                )
            )
    asked = random_spec(ctx.rng)
    present = any(o.name == asked.name for o in objects)
    answer = f"yes, there is {with_article(asked.name)}" if present else f"no, there is no {asked.name}"
    pool.append((f"Is there {with_article(asked.name)} in the image?", sentence(answer)))
    return pool


def build_conversation(ctx: Context) -> Sample:
    scene = _scene(ctx)
    pool = conversation_pool(ctx, scene)
    n_turns = min(len(pool), int(ctx.rng.integers(2, 5)))
    chosen = [pool[int(i)] for i in ctx.rng.choice(len(pool), size=n_turns, replace=False)]
    return _with_image(ctx, scene, chosen)


def build_detail(ctx: Context) -> Sample:
    scene = _scene(ctx)
    return _with_image(ctx, scene, [(pick(ctx.rng, DETAIL_PROMPTS), detailed_description(scene))])


# ---- reasoning -----------------------------------------------------------------------------

RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _count_answer(matches: list[SceneObject], singular: str, plural: str) -> str:
    if not matches:
        return f"There are no {plural}. So the answer is 0."
    noun = singular if len(matches) == 1 else plural
    verb = "is" if len(matches) == 1 else "are"
    listed = join_words([with_article(object_phrase(o)) for o in matches])
    return f"There {verb} {vocab.number_word(len(matches))} {noun}: {listed}. So the answer is {len(matches)}."


def count_by_color(ctx: Context, scene: Scene) -> QA:
    # Colours in the scene are drawn more often than absent ones, so most answers are not 0.
    color = pick(ctx.rng, [o.color for o in scene.objects] + list(vocab.COLORS))
    matches = [o for o in scene.objects if o.color == color]
    return f"How many {color} objects are there?", _count_answer(matches, f"{color} object", f"{color} objects")


def count_by_shape(ctx: Context, scene: Scene) -> QA:
    shape = pick(ctx.rng, [o.shape for o in scene.objects] + list(vocab.SHAPES))
    matches = [o for o in scene.objects if o.shape == shape]
    return f"How many {vocab.plural(shape)} are there?", _count_answer(matches, shape, vocab.plural(shape))


def relative_position(ctx: Context, scene: Scene) -> QA:
    anchor = pick(ctx.rng, scene.objects)
    relation = pick(ctx.rng, list(RELATION_WORDS))
    axis, relate = (0, horizontal_relation) if relation in ("left", "right") else (1, vertical_relation)
    others = [o for o in scene.objects if o is not anchor and separated(o, anchor, axis, scene.side)]
    matches = [o for o in others if relate(o, anchor) == relation]
    where = f"{RELATION_WORDS[relation]} the {anchor.name}"
    if not matches:
        return f"What is {where}?", f"Nothing is {where}."
    verb = "is" if len(matches) == 1 else "are"
    return f"What is {where}?", sentence(f"{join_words([f'the {o.name}' for o in matches])} {verb} {where}")


def compare_size(ctx: Context, scene: Scene) -> QA:
    a, b = (scene.objects[int(i)] for i in ctx.rng.choice(len(scene.objects), size=2, replace=False))
    question = f"Which is larger, the {a.name} or the {b.name}?"
    if a.size == b.size:
        return question, f"The {a.name} and the {b.name} are both {a.size}, so they are the same size."
    larger = a if a.size == "large" else b
    return question, f"The {a.name} is {a.size} and the {b.name} is {b.size}, so the {larger.name} is larger."


REASONING: tuple[Callable[[Context, Scene], QA], ...] = (
    count_by_color,
    count_by_shape,
    relative_position,
    compare_size,
)


def build_reasoning(ctx: Context) -> Sample:
    scene = _scene(ctx, least=2)
    return _with_image(ctx, scene, [ctx.cycle(REASONING)(ctx, scene)])


# ---- text only -----------------------------------------------------------------------------

OPPOSITES = {"left": "right", "right": "left", "above": "below", "below": "above", "up": "down", "down": "up",
             "small": "large", "large": "small", "first": "second", "second": "first"}  # fmt: skip


def text_only_pool() -> list[QA]:
    pool = [(f"What is the opposite of {word}? Answer with one word.", other) for word, other in OPPOSITES.items()]
    pool += [(f"Is {color} a color or a shape? Answer with one word.", "color") for color in vocab.COLORS]
    pool += [(f"Is {shape} a color or a shape? Answer with one word.", "shape") for shape in vocab.SHAPES]
    return pool


def build_text_only(ctx: Context) -> Sample:
    return Sample(turns(pick(ctx.rng, text_only_pool())))


STAGE1 = Task("caption", build_stage1_caption)
TRAIN_ONLY = (
    Task("conversation", build_conversation),
    Task("detail", build_detail),
    Task("reasoning", build_reasoning),
    Task("text_only", build_text_only, train_weight=0.1),
)
