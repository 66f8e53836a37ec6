"""Scored single-image tasks: color, shape, count, position, hires_detail."""

from __future__ import annotations

from collections.abc import Callable

from . import vocab
from .followups import follow_up_pairs
from .questions import (
    COUNT_QUESTION,
    SIDE_WORDS,
    color_question,
    list_question,
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
    ONE_LETTER,
    ONE_WORD,
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
    if ctx.split != "eval":
        sample.annotations.append(annotation_record(scene, image))
        if follow_ups and ctx.settings.follow_ups:
            sample.conversations += turns(*follow_up_pairs(scene, ctx.rng, ctx.settings.follow_ups, question))
    return sample


def build_color(ctx: Context) -> Sample:
    target = ctx.cycle(COLOR_NAMES)
    n = int(ctx.rng.integers(1, 4))
    first = random_spec(ctx.rng, color=target)
    scene = ctx.fresh(lambda: ctx.place(distinct_specs(ctx.rng, n, ("shape",), [first])))
    return _save(ctx, scene, color_question(None if n == 1 else first.shape), target, COLOR_NAMES)


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

    Finding an object by its shape is what the model learned last and least: after eight stage-2
    epochs it named the colour of another object in the image for half the scenes of several
    objects, and four times the stage-2 colour questions did not change that. Trained on these
    alone, after the re-captions, the model learned it abruptly, near step 450 to 900 of 16 scenes
    or not in 1,122 steps depending on the draw; after the listings (build_listing) it fell by step
    330 (the quickstart's grounding phase, run.py). No turn names a colour and a shape together, so
    no answer can be copied from an earlier one.
    """
    return _ask_every_object(ctx, "shape", lambda obj: (color_question(obj.shape), obj.color))


def build_shape_grounding(ctx: Context) -> Sample:
    """Stage-1.5 shape grounding: a scene of 3 to 5 objects of different colours, and the shape of
    every object asked by its colour, one turn each (the eval's "What shape is the red object?").

    Replayed in the motion phase, after the side listings and relation questions have drilled
    "<colour> <side>" for hundreds of steps: without it stage-2 answered the shape of another
    object for 12 and 28 of 63 held-out scenes of several objects in two data orders (shape 0.88,
    0.72), with 500 of these 1.00 (docs/quickstart.md, item 27). Twice as many cost the lookup
    the other way (colour 0.77).
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
    with the answer a dozen tokens after the cue, the lookups were learned abruptly after hundreds
    of steps or not at all; named this way both were learned within 300 steps (docs/quickstart.md,
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
    object is. The LM did not learn to read an object's side asked as a question (loss flat for
    374 steps), nor its column named right after its colour (place listings: the number right
    0.59 of the time after 374 steps). Named this way, two words, the side right after the colour,
    it was learned within 250 steps (0.95 on fresh scenes), from a tower whose tokens keep their
    place (docs/quickstart.md, item 26).
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

    After the side listings, on three worlds, held-out relations asked this way were right 0.84-0.87
    of the time after 374 steps, the sides 0.975-1.00 (a guess at the relation when both objects
    are on one side caps it near 0.85); asked for the relation word alone, or for the sides in a
    sentence ("The red circle is left of ..."), they stayed at chance (docs/quickstart.md, item 27).
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
    n = int(ctx.rng.integers(1, 4))
    first = random_spec(ctx.rng, shape=target)
    scene = ctx.fresh(lambda: ctx.place(distinct_specs(ctx.rng, n, ("color",), [first])))
    return _save(ctx, scene, shape_question(None if n == 1 else first.color), target, vocab.SHAPES)


def count_choices(settings: WorldSettings) -> tuple[str, ...]:
    return tuple(str(n) for n in range(1, settings.max_objects + 1))


def build_count(ctx: Context) -> Sample:
    choices = count_choices(ctx.settings)
    target = ctx.cycle(choices)
    specs = distinct_specs(ctx.rng, int(target))
    scene = ctx.fresh(lambda: ctx.place(specs))
    return _save(ctx, scene, COUNT_QUESTION, target, choices)


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
    question, reply = relation_turn(a, b, axis, side)
    return _save(ctx, scene, question, target, options, reply=reply)


def hires_choices(settings: WorldSettings) -> tuple[str, ...]:
    return vocab.LETTERS + COLOR_NAMES


def hires_geometry(settings: WorldSettings) -> tuple[int, int]:
    """(tiny object px, letter cell px) on the large image. Both shrink below two pixels once
    the image is squashed to the normal side: at 4x, a 6 px object and a 5x7 px letter.
    (A 2 px cell would leave a 3x4 px blob that a linear probe still reads 97% of the time.)"""
    ratio = settings.hires_side / settings.image_side
    tiny_px = max(2, round(vocab.TINY_EXTENT_NORMAL_PX * ratio))
    return tiny_px, max(1, int(ratio // 4))


def build_hires_detail(ctx: Context) -> Sample:
    asks_letter = ctx.index % 2 == 0
    turn = ctx.index // 2  # alternate the kind, then cycle through its answers
    if asks_letter:
        target = vocab.LETTERS[turn % len(vocab.LETTERS)]
        detail = Spec("letter", pick(ctx.rng, COLOR_NAMES), "tiny", letter=target)
        question, options = f"What letter is written in the image? {ONE_LETTER}", vocab.LETTERS
    else:
        target = COLOR_NAMES[turn % len(COLOR_NAMES)]
        detail = _tiny_object(ctx, target)
        question, options = TINY_COLOR_QUESTION, COLOR_NAMES
    scene = _hires_scene(ctx, detail)
    # The tiny detail is what this task is about; the others are context, so no follow-ups.
    return _save(ctx, scene, question, target, options, follow_ups=False)


TINY_COLOR_QUESTION = f"What color is the tiny object? {ONE_WORD}"


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

    Finding the tiny object among large ones is a lookup by size, learned in stage-2 from its 150
    questions, or not: after a motion phase it named the right colour for 14 of 50 held-out images
    in one stage-2 data order (37 in another); with these scenes in the grounding phase and half of
    them replayed in the motion phase, 49 of 50 in the first (docs/quickstart.md, item 25). The
    grounding phase ends before it learns them (7-10 of 50 from the grounding models of three
    worlds, item 26): what they change is what stage-2 starts from. No annotation, as for the other
    drills.
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
SHAPE_GROUNDING = Task("shape_grounding", build_shape_grounding, train_weight=5 / 3)  # 500 at 300 a task
LISTING = Task("listing", build_listing, train_weight=10.0)
SIDE_LISTING = Task("side_listing", build_side_listing, train_weight=10.0)
RELATION_DRILL = Task("relation", build_relation_drill, train_weight=10.0)
TINY_GROUNDING = Task("tiny_grounding", build_tiny_grounding)  # train_per_task large images
