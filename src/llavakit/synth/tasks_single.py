"""Scored single-image tasks: color, shape, count, position, hires_detail."""

from __future__ import annotations

from collections.abc import Callable

from . import vocab
from .followups import follow_up_pairs
from .questions import (
    SIDE_WORDS,
    color_question,
    list_question,
    phrase,
    listing_answer,
    relation_turn,
    relation_word,
    side_answer,
    side_question,
    shape_question,
)
from .records import annotation_record
from .render import draw_scene
from .scene import (
    Scene,
    SceneObject,
    Spec,
    distinct_specs,
    pick,
    random_spec,
    separated,
)
from .settings import WorldSettings
from .task import (
    Context,
    Sample,
    Task,
    image_turns,
    single_image_question,
    turns,
)

COLOR_NAMES = tuple(vocab.COLORS)


def _save(ctx: Context, scene: Scene, question: str, answer: str, options: tuple[str, ...],
          follow_ups: bool = True, reply: str | None = None) -> Sample:
    """Render and save the scene and ask the question; training samples also keep the scene's
    annotation and ask a few follow-up questions about the same image (eval samples ask one)."""
    image = ctx.save_image(draw_scene(scene))
    sample = single_image_question(question, answer, image, options, reply)
    if not ctx.held_out_split:
        sample.annotations.append(annotation_record(scene, image))
        if follow_ups and ctx.settings.follow_ups:
            sample.conversations += turns(*follow_up_pairs(scene, ctx.rng, ctx.settings.follow_ups, question))
    return sample


def build_color(ctx: Context) -> Sample:
    target = ctx.cycle(COLOR_NAMES)
    (n, first), scene = ctx.fresh_choosing(
        lambda: (int(ctx.rng.integers(1, 4)), random_spec(ctx.rng, color=target)),
        lambda choice: ctx.place(distinct_specs(ctx.rng, choice[0], ("shape",), [choice[1]])))
    return _save(ctx, scene, color_question(None if n == 1 else first.shape, ctx.variant), target, COLOR_NAMES)


def _drill_scene(ctx: Context, unique: tuple[str, ...],
                 accept: Callable[[Scene], bool] = lambda scene: True) -> tuple[Scene, str]:
    """A stage-1.5 drill scene: 3 to 5 objects (as many as the vocabulary of each `unique`
    attribute allows) in which those attributes never repeat, one that `accept`s, and its saved
    image."""
    kinds = {"shape": len(vocab.SHAPES), "color": len(vocab.COLORS)}
    most = min(ctx.settings.max_objects, *(kinds[key] for key in unique))
    n = int(ctx.rng.integers(min(3, most), most + 1))

    def draw() -> Scene | None:
        scene = ctx.place(distinct_specs(ctx.rng, n, unique))
        return scene if scene is not None and accept(scene) else None

    scene = ctx.fresh(draw)
    return scene, ctx.save_image(draw_scene(scene))


def _ask_every_object(ctx: Context, key: str, turn: Callable[[SceneObject], tuple[str, str]]) -> Sample:
    """A drill scene whose objects never repeat their ``key`` attribute, and one ``turn`` about each
    object in a random order. No annotation: the tower keeps training on the same images as without
    the drill."""
    scene, image = _drill_scene(ctx, (key,))
    asked = [scene.objects[int(i)] for i in ctx.rng.permutation(len(scene.objects))]
    return Sample(image_turns([turn(obj) for obj in asked]), image=image)


def build_grounding(ctx: Context) -> Sample:
    """Stage-1.5 grounding: a scene of 3 to 5 objects of different shapes, and the colour of every
    object asked by its shape, one turn each (the eval's "What color is the triangle?").

    Finding an object by its shape is what the model learned last and least: in stage-2 it often
    named the colour of another object in the image, and more stage-2 colour questions did not
    change that. Every object asked in turn makes the lookup the whole of the loss; it is learned
    sooner and more reliably after the listings (build_listing) than before them. No turn names a
    colour and a shape together, so no answer can be copied from an earlier one.
    """
    return _ask_every_object(ctx, "shape", lambda obj: (color_question(obj.shape), obj.color))


def build_shape_grounding(ctx: Context) -> Sample:
    """Stage-1.5 shape grounding: a scene of 3 to 5 objects of different colours, and the shape of
    every object asked by its colour, one turn each (the eval's "What shape is the red object?").

    For replay after the side listings and relation questions have drilled "<colour> <side>":
    those drills pull the colour word towards a place, and without this replay stage-2 answered
    the shape of another object for some scenes of several objects. Kept few (train_weight below),
    since more of them weaken the lookup the other way, the colour by shape (history:
    docs/experiments/quickstart-history.md, item 27).
    """
    return _ask_every_object(ctx, "color", lambda obj: (shape_question(obj.color), obj.shape))


def build_listing(ctx: Context) -> Sample:
    """Stage-1.5 listing: a scene of 3 to 5 objects of different shapes and colours, every object
    named once. Even samples name them "<color> <shape>", the colours in the order of
    `vocab.COLORS` ("orange circle, cyan cross, blue triangle."); odd ones "<shape> <color>", the
    shapes in the order of `vocab.SHAPES` ("circle orange, triangle blue, cross cyan.").

    Each of the two lookups the eval asks for ("What shape is the red object?", "What color is the
    triangle?") is here one step from its cue: the second word of a pair comes right after the
    first, so the first word's own position must find its object in the image. Asked as questions,
    with the answer a dozen tokens after the cue, the lookups were learned late and unreliably;
    named this way both were learned quickly (history: docs/experiments/quickstart-history.md,
    item 23). The fixed orders leave nothing to guess once they are learned, so the loss falls to
    near zero and the phase can end on it.
    """
    scene, image = _drill_scene(ctx, ("shape", "color"))
    by_color = ctx.index % 2 == 0
    order = list(vocab.COLORS) if by_color else list(vocab.SHAPES)
    named = sorted(scene.objects, key=lambda obj: order.index(obj.color if by_color else obj.shape))
    return Sample(image_turns([(list_question(by_color), listing_answer(named, by_color))]), image=image)


SIDE_MARGIN = 0.05  # of the image side: how far from the centre line every object's centre is


def _clear_of_centre(side: int, axes: tuple[int, ...]) -> Callable[[Scene], bool]:
    """Whether every object's centre is SIDE_MARGIN from the image's centre line on each of ``axes``
    (always so on the world's grid; a world without it may put an object on the line)."""
    return lambda scene: all(abs(obj.center[axis] - side / 2) >= SIDE_MARGIN * side
                             for obj in scene.objects for axis in axes)


def build_side_listing(ctx: Context) -> Sample:
    """Stage-1.5 side listing: a scene of 3 to 5 objects of different shapes and colours, every
    object named by its colour and its side of the image's centre, left or right (even samples)
    or above or below (odd ones), colours in the order of `vocab.COLORS`: "orange left, cyan
    right, blue right.".

    The relation questions ("Is the red circle left or right of the blue square?") need where each
    object is. The LM did not learn to read an object's side asked as a question, nor its column
    number named right after its colour (place listings). Named this way, two words, the side
    right after the colour, it was learned, from a tower whose tokens keep their place (history:
    docs/experiments/quickstart-history.md, item 26).
    """
    axis = ctx.index % 2
    side = ctx.settings.image_side
    scene, image = _drill_scene(ctx, ("shape", "color"), _clear_of_centre(side, (axis,)))
    named = sorted(scene.objects, key=lambda obj: COLOR_NAMES.index(obj.color))
    return Sample(image_turns([(side_question(axis), side_answer(named, axis, side))]), image=image)


RELATION_TURNS = 4  # relation questions per drill scene


def build_relation_drill(ctx: Context) -> Sample:
    """Stage-1.5 relations: a scene of 3 to 5 objects of different shapes and colours, and up to
    four of the eval's relation questions with their reasoned answers ("Is the red circle left or
    right of the blue square? Name each side first." "red left, blue right, so left."), each
    object asked about once, against another object far enough from it on a random axis.

    Asked this way, after the side listings, the relation follows from the two sides the answer
    has just named (when both objects are on one side of the centre, the sides do not decide it and
    the relation is a guess); asked for the relation word alone, or for the sides in a sentence
    ("The red circle is left of ..."), the tiny model stayed at chance (history:
    docs/experiments/quickstart-history.md, item 27).
    """
    side = ctx.settings.image_side

    def has_pair(scene: Scene) -> bool:
        return any(separated(a, b, axis, side) for a in scene.objects for b in scene.objects
                   if a is not b for axis in (0, 1))

    clear = _clear_of_centre(side, (0, 1))
    scene, image = _drill_scene(ctx, ("shape", "color"), lambda scene: clear(scene) and has_pair(scene))
    asked, seen = [], set()
    for k in ctx.rng.permutation(len(scene.objects)):
        a = scene.objects[int(k)]
        for axis in (int(x) for x in ctx.rng.permutation(2)):
            others = [b for b in scene.objects
                      if b is not a and separated(a, b, axis, side) and (b.name, a.name, axis) not in seen]
            if others:
                b = others[int(ctx.rng.integers(len(others)))]
                seen.add((a.name, b.name, axis))
                asked.append(relation_turn(a, b, axis, side))
                break
        if len(asked) == RELATION_TURNS:
            break
    return Sample(image_turns(asked), image=image)


def build_shape(ctx: Context) -> Sample:
    target = ctx.cycle(vocab.SHAPES)
    (n, first), scene = ctx.fresh_choosing(
        lambda: (int(ctx.rng.integers(1, 4)), random_spec(ctx.rng, shape=target)),
        lambda choice: ctx.place(distinct_specs(ctx.rng, choice[0], ("color",), [choice[1]])))
    return _save(ctx, scene, shape_question(None if n == 1 else first.color, ctx.variant), target, vocab.SHAPES)


def count_choices(settings: WorldSettings) -> tuple[str, ...]:
    return tuple(str(n) for n in range(1, settings.max_objects + 1))


def build_count(ctx: Context) -> Sample:
    choices = count_choices(ctx.settings)
    target = ctx.cycle(choices)
    _, scene = ctx.fresh_choosing(lambda: distinct_specs(ctx.rng, int(target)), ctx.place)
    return _save(ctx, scene, phrase("count", ctx.variant), target, choices)


def build_position(ctx: Context) -> Sample:
    target = ctx.cycle(vocab.RELATIONS)
    axis = 0 if target in ("left", "right") else 1
    side = ctx.settings.image_side

    def draw() -> Scene | None:
        scene = ctx.place(distinct_specs(ctx.rng, int(ctx.rng.integers(2, 4)), ("color", "shape")))
        if scene is None:
            return None
        a, b = scene.objects[:2]
        return scene if separated(a, b, axis, side) and relation_word(a, b, axis) == target else None

    scene = ctx.fresh(draw)
    a, b = scene.objects[:2]
    options = SIDE_WORDS[axis]
    question, reply = relation_turn(a, b, axis, side, ctx.variant)
    return _save(ctx, scene, question, target, options, reply=reply)


def hires_choices(settings: WorldSettings) -> tuple[str, ...]:
    return vocab.LETTERS + COLOR_NAMES


def hires_geometry(settings: WorldSettings) -> tuple[int, int]:
    """(tiny object px, letter cell px) on the large image. Both shrink below two pixels once
    the image is squashed to the normal side: at 4x, a 6 px object and a 5x7 px letter.
    (With 2 px cells a letter survives the squash as a blob that a linear probe still reads, so
    the task would not need the large image.)"""
    ratio = settings.hires_side / settings.image_side
    tiny_px = max(2, round(vocab.TINY_EXTENT_NORMAL_PX * ratio))
    return tiny_px, max(1, int(ratio // 4))


def build_hires_detail(ctx: Context) -> Sample:
    asks_letter = ctx.index % 2 == 0
    turn = ctx.index // 2  # alternate the kind, then cycle through its answers
    if asks_letter:
        target = vocab.LETTERS[turn % len(vocab.LETTERS)]
        detail = Spec("letter", pick(ctx.rng, COLOR_NAMES), "tiny", letter=target)
        question, options = phrase("hires_letter", ctx.variant), vocab.LETTERS
    else:
        target = COLOR_NAMES[turn % len(COLOR_NAMES)]
        detail = _tiny_object(ctx, target)
        question, options = phrase("hires_tiny_color", ctx.variant), COLOR_NAMES
    scene = _hires_scene(ctx, detail)
    # The tiny detail is what this task is about; the others are context, so no follow-ups.
    return _save(ctx, scene, question, target, options, follow_ups=False)


TINY_COLOR_QUESTION = phrase("hires_tiny_color")


def _tiny_object(ctx: Context, color: str) -> Spec:
    return Spec(pick(ctx.rng, vocab.SHAPES), color, "tiny")


def _hires_scene(ctx: Context, detail: Spec) -> Scene:
    """A large image: 1 to 3 objects of the normal sizes and the tiny ``detail``."""
    tiny_px, cell = hires_geometry(ctx.settings)
    n_others = int(ctx.rng.integers(1, 4))
    specs = distinct_specs(ctx.rng, n_others) + [detail]
    return ctx.fresh(lambda: ctx.place(specs, ctx.settings.hires_side, tiny_px=tiny_px, letter_cell=cell))


def build_tiny_grounding(ctx: Context) -> Sample:
    """Stage-1.5: the detail task's colour question ("What color is the tiny object?") on a large
    image of its own, the tiny object's colour cycling through the colours.

    Finding the tiny object among large ones is a lookup by size; from stage-2's colour questions
    alone it was learned in one data order and not in another. These scenes, in the grounding phase
    and replayed in the motion phase, make it part of what stage-2 starts from, though the grounding
    phase ends before it learns them itself (history: docs/experiments/quickstart-history.md, items
    25 and 26). No annotation, as for the other drills.
    """
    target = COLOR_NAMES[ctx.index % len(COLOR_NAMES)]
    image = ctx.save_image(draw_scene(_hires_scene(ctx, _tiny_object(ctx, target))))
    return single_image_question(TINY_COLOR_QUESTION, target, image, COLOR_NAMES)


TASKS = (
    Task("color", build_color, lambda s: COLOR_NAMES),
    Task("shape", build_shape, lambda s: vocab.SHAPES),
    Task("count", build_count, count_choices),
    Task("position", build_position, lambda s: vocab.RELATIONS),
    Task("hires_detail", build_hires_detail, hires_choices),
)

# Stage-1.5 data, not a stage-2 kind (world.py writes it to its own file): 10 x train_per_task scenes.
GROUNDING = Task("grounding", build_grounding, train_weight=10.0)
SHAPE_GROUNDING = Task("shape_grounding", build_shape_grounding, train_weight=5 / 3)  # 500 at the default 300 a task
LISTING = Task("listing", build_listing, train_weight=10.0)
SIDE_LISTING = Task("side_listing", build_side_listing, train_weight=10.0)
RELATION_DRILL = Task("relation", build_relation_drill, train_weight=10.0)
TINY_GROUNDING = Task("tiny_grounding", build_tiny_grounding)  # train_per_task large images
