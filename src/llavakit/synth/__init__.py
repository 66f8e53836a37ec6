"""The synthetic visual world: seeded scenes of simple objects, with captions, boxes,
instruction data, multi-image pairs, videos, multi-view scenes and held-out eval tasks.

    from llavakit.synth import WorldSettings, generate_world
    world_dir = generate_world("world", WorldSettings(seed=0, scale=0.1))
"""

from .random_scene import RenderedScene, render_random_scene
from .settings import WORLD_VERSION, WorldSettings
from .world import EVAL_TASKS, TRAIN_KINDS, generate_world, is_complete, load_world

EVAL_TASK_NAMES: tuple[str, ...] = tuple(task.name for task in EVAL_TASKS)

__all__ = [
    "EVAL_TASKS",
    "EVAL_TASK_NAMES",
    "RenderedScene",
    "TRAIN_KINDS",
    "WORLD_VERSION",
    "WorldSettings",
    "generate_world",
    "is_complete",
    "load_world",
    "render_random_scene",
]
