"""Registers the llavakit model with lmms-eval, through its ``lmms_eval.models`` entry-point group.

The entry point (in llavakit's pyproject.toml)::

    [project.entry-points."lmms_eval.models"]
    llavakit = "llavakit.evaluation.lmms_plugin:manifest"

lmms-eval calls `manifest` when it builds its model registry; the adapter module (which imports
lmms-eval's base class) is imported only when ``--model llavakit`` is used.
"""

from __future__ import annotations

MODEL_ID = "llavakit"
CLASS_PATH = "llavakit.evaluation.lmms_adapter.LlavakitLmms"


def manifest():
    """lmms-eval's `ModelManifest` for ``--model llavakit``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
