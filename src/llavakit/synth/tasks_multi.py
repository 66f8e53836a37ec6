"""Scored multi-image tasks: spot_difference, which_image, multiview.

Every sample alternates between the two placements of LLaVA-NeXT-Interleave: "interleaved"
(each <image> where it is named) and "front" (all <image> first, then "the first image" ...).
"""

from __future__ import annotations

from . import vocab
from .language import with_article
from .records import annotation_record
from .render import draw_scene
from .scene import Scene, Spec, distinct_specs, pick, random_spec
from .settings import WorldSettings
from .solids import render_view, sample_hidden_scene
from .questions import phrase
from .task import (
    Context,
    Sample,
    Task,
    image_format_for,
    multi_image_prompt,
    turns,
)

COLOR_NAMES = tuple(vocab.COLORS)
IMAGE_FORMATS = ("interleaved", "front")
WHICH = ("first", "second")


def _multi_image_sample(
    ctx: Context, images: list[str], labels: list[str], text: str, answer: str, options, scenes: tuple[Scene, ...] = ()
) -> Sample:
    """`scenes` (flat scenes, one per image) are annotated for training splits, as single images are."""
    image_format = image_format_for(ctx)
    prompt = multi_image_prompt(labels, text[image_format], image_format)
    annotations = [annotation_record(s, i) for s, i in zip(scenes, images)] if not ctx.held_out_split else []
    return Sample(
        turns((prompt, answer)), image=images, answer=answer, options=tuple(options), image_format=image_format,
        annotations=annotations,
    )


def build_spot_difference(ctx: Context) -> Sample:
    target = ctx.cycle(vocab.SHAPES)
    first = random_spec(ctx.rng, shape=target)
    n = int(ctx.rng.integers(2, 5))

    def draw() -> tuple[Scene, Scene] | None:
        before = ctx.place(distinct_specs(ctx.rng, n, ("shape",), [first]))
        if before is None:
            return None
        if ctx.rng.random() < 0.5:
            return before, before.without(0)
        return before, before.recolored(0, pick(ctx.rng, [c for c in COLOR_NAMES if c != first.color]))

    # Both images are checked against the held-out scenes: on the grid, the changed image of a
    # training pair can be pixel for pixel an eval scene.
    before, after = ctx.fresh(draw)
    images = [ctx.save_image(draw_scene(before), "_1"), ctx.save_image(draw_scene(after), "_2")]
    text = {image_format: phrase(f"spot_difference_{image_format}", ctx.variant) for image_format in IMAGE_FORMATS}
    return _multi_image_sample(ctx, images, ["Image 1", "Image 2"], text, target, vocab.SHAPES, (before, after))


def build_which_image(ctx: Context) -> Sample:
    answer = ctx.cycle(WHICH)
    target = random_spec(ctx.rng)
    with_target = ctx.fresh(
        lambda: ctx.place(distinct_specs(ctx.rng, int(ctx.rng.integers(1, 4)), first=[target]))
    )
    without_target = ctx.fresh(lambda: _scene_without(ctx, target))
    pair = [with_target, without_target] if answer == "first" else [without_target, with_target]
    images = [ctx.save_image(draw_scene(scene), f"_{k + 1}") for k, scene in enumerate(pair)]
    question = phrase("which_image", ctx.variant, target=with_article(target.name))
    return _multi_image_sample(
        ctx, images, ["Image 1", "Image 2"], dict.fromkeys(IMAGE_FORMATS, question), answer, WHICH, tuple(pair)
    )


def _scene_without(ctx: Context, target: Spec) -> Scene | None:
    """A scene lacking the target; half the time it holds a near miss (same colour or same shape)."""
    n = int(ctx.rng.integers(1, 4))
    first = []
    if ctx.rng.random() < 0.5:
        near = (
            random_spec(ctx.rng, color=target.color)
            if ctx.rng.random() < 0.5
            else random_spec(ctx.rng, shape=target.shape)
        )
        first = [near]
    specs = distinct_specs(ctx.rng, n, first=first)
    if any(spec.name == target.name for spec in specs):
        return None
    return ctx.place(specs)


def multiview_choices(settings: WorldSettings) -> tuple[str, ...]:
    return tuple(str(n) for n in range(2, settings.max_objects + 1)) + COLOR_NAMES


def build_multiview(ctx: Context) -> Sample:
    """One solid is hidden in one view (a random one, so "count the first view and add one"
    does not work); the count or the hidden solid's colour needs the other views."""
    asks_count = ctx.index % 2 == 0
    turn = ctx.index // 2
    counts = multiview_choices(ctx.settings)[: ctx.settings.max_objects - 1]
    n = int(counts[turn % len(counts)]) if asks_count else int(ctx.rng.integers(2, ctx.settings.max_objects + 1))
    hidden_color = None if asks_count else COLOR_NAMES[turn % len(COLOR_NAMES)]
    n_views = int(ctx.rng.integers(2, 4))
    hidden_view = int(ctx.rng.integers(n_views))
    side = ctx.settings.image_side
    scene, hidden = ctx.fresh(
        lambda: sample_hidden_scene(ctx.rng, n, n_views, side, hidden_color, hidden_view),
        scene_of=lambda result: result[0],
    )
    images = [ctx.save_image(render_view(scene, view, side), f"_view{view + 1}") for view in range(n_views)]
    labels = [f"View {view + 1}" for view in range(n_views)]
    # "front" prompts say first that the images are views of one scene; "interleaved" ones label each view
    if asks_count:
        answer, options = str(n), counts
        text = {image_format: phrase(f"multiview_count_{image_format}", ctx.variant) for image_format in IMAGE_FORMATS}
    else:
        answer, options = scene.solids[hidden].color, COLOR_NAMES
        text = {image_format: phrase(f"multiview_hidden_{image_format}", ctx.variant, view=str(hidden_view + 1),
                                     ordinal=vocab.ORDINALS[hidden_view])
                for image_format in IMAGE_FORMATS}
    return _multi_image_sample(ctx, images, labels, text, answer, options)


TASKS = (
    Task("spot_difference", build_spot_difference, lambda s: vocab.SHAPES),
    Task("which_image", build_which_image, lambda s: WHICH),
    Task("multiview", build_multiview, multiview_choices),
)
