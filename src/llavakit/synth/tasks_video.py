"""Video samples: video_direction (scored), video_caption and the motion drill (training only)."""

from __future__ import annotations

from . import vocab
from .language import object_phrase, sentence, with_article
from .questions import phrase
from .task import VIDEO, Context, Sample, Task, turns
from .video import MovingScene, render_frames, sample_moving_scene

MOTION = {"left": "moves to the left", "right": "moves to the right", "up": "moves up", "down": "moves down"}


def _moving_scene(ctx: Context, direction: str) -> MovingScene:
    n_still = int(ctx.rng.integers(0, 3))
    side = ctx.settings.video_side
    return ctx.fresh(lambda: sample_moving_scene(ctx.rng, side, direction, n_still, ctx.settings.grid))


def build_video_direction(ctx: Context, by_color: bool = False) -> Sample:
    direction = ctx.cycle(vocab.DIRECTIONS)
    scene = _moving_scene(ctx, direction)
    video = ctx.save_video(render_frames(scene, ctx.settings.video_frames))
    mover = f"{scene.mover.color} object" if by_color else scene.mover.name
    question = f"{VIDEO}\n{phrase('video_direction', ctx.variant, mover=mover)}"
    return Sample(turns((question, direction)), video=video, answer=direction, options=vocab.DIRECTIONS)


def build_motion_drill(ctx: Context) -> Sample:
    """The direction question; every other clip names the mover by its colour alone ("the blue
    object": a clip's colours never repeat). Asked always as the eval asks it ("the blue cross"),
    the drill teaches the model to find the mover by its shape word, and stage-2 then learned the
    lookup by colour ("What shape is the red object?") less well than without the phase; naming
    the mover by colour in half the clips keeps both lookups in use (history:
    docs/experiments/quickstart-history.md, item 25)."""
    return build_video_direction(ctx, by_color=ctx.index % 2 == 1)


def video_caption(scene: MovingScene) -> str:
    lines = [sentence(f"{with_article(object_phrase_of(scene))} {MOTION[scene.direction]}")]
    lines += [sentence(f"{with_article(object_phrase(obj))} does not move") for obj in scene.still.objects]
    return " ".join(lines)


def object_phrase_of(scene: MovingScene) -> str:
    return f"{scene.mover.size} {scene.mover.name}"


def build_video_caption(ctx: Context) -> Sample:
    scene = _moving_scene(ctx, ctx.cycle(vocab.DIRECTIONS))
    video = ctx.save_video(render_frames(scene, ctx.settings.video_frames))
    return Sample(turns((f"{VIDEO}\nDescribe the video.", video_caption(scene))), video=video)


TASKS = (Task("video_direction", build_video_direction, lambda s: vocab.DIRECTIONS),)
TRAIN_ONLY = (Task("video_caption", build_video_caption, train_weight=0.5),)
# The motion drill of stage-1.5: direction questions alone, on as many clips as
# WorldSettings.motion_drill asks (a task name of its own, so its clips are other draws than
# stage-2's). Among the other tasks the tiny model stayed near chance on direction; in a phase of
# their own it learns it (the quickstart's motion phase).
MOTION_DRILL = Task("motion", build_motion_drill)
