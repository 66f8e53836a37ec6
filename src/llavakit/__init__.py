"""llavakit: build, train, evaluate and serve LLaVA-family multimodal models.

The top level imports nothing heavy: ``llavakit.load`` and friends pull in torch and transformers
on first use, so light tools (``llavakit score``, ``curate``) start instantly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Generation", "Llava", "LlavaConfig", "load", "__version__"]

if TYPE_CHECKING:
    from llavakit.api import Generation, Llava, load
    from llavakit.config import LlavaConfig

_LAZY = {"Generation": "llavakit.api", "Llava": "llavakit.api", "load": "llavakit.api", "LlavaConfig": "llavakit.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llavakit' has no attribute {name!r}")
