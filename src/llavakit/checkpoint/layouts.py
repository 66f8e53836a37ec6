"""State-dict key layouts found in the wild, mapped to ours and back.

- original LLaVA-NeXT: ``model.mm_projector.{0,2}``, ``model.vision_tower.vision_tower.vision_model.*``,
  ``model.image_newline``, LLM at ``model.*`` and ``lm_head.*``;
- hub (transformers 4.4x, what vLLM reads): ``language_model.model.*``, ``language_model.lm_head.*``,
  ``vision_tower.vision_model.*``, ``multi_modal_projector.linear_{1,2}``, ``image_newline``;
- in-memory (transformers 5): ``model.language_model.*``, ``model.vision_tower.*``,
  ``model.multi_modal_projector.*``, ``model.image_newline``, ``lm_head.*``.

Ours is the hub layout with the vision tower's own key names (transformers 5 vision models drop the
``vision_model.`` level), so each incoming key is first assigned to a component, then renamed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_MM_PROJECTOR = re.compile(r"^model\.mm_projector\.(\d+)\.(.+)$")

# (prefix, component, replacement prefix), most specific first.
_RULES = (
    ("model.vision_tower.vision_tower.", "vision", ""),
    ("model.vision_tower.", "vision", ""),
    ("vision_tower.", "vision", ""),
    ("model.multi_modal_projector.", "projector", ""),
    ("multi_modal_projector.", "projector", ""),
    ("model.image_newline", "newline", ""),
    ("image_newline", "newline", ""),
    ("language_model.model.", "llm", "model."),
    ("language_model.lm_head.", "llm", "lm_head."),
    ("model.language_model.", "llm", "model."),
    ("lm_head.", "llm", "lm_head."),
    ("model.", "llm", "model."),  # original layout: the LLM lives at model.*
)


def detect_layout(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any(k.startswith(("model.mm_projector.", "model.vision_tower.vision_tower.")) for k in keys):
        return "original"
    if any(k.startswith(("model.language_model.", "model.multi_modal_projector.")) for k in keys):
        return "in_memory"
    if any(k.startswith("language_model.") for k in keys):
        return "hub"
    return "unknown"


def to_native(key: str, vision_has_vision_model: bool) -> str | None:
    """Our key for an incoming key, or None for keys that belong to no component."""
    match = _MM_PROJECTOR.match(key)
    if match:  # nn.Sequential(Linear, GELU, Linear, ...): even indices are the linears
        index, rest = int(match.group(1)), match.group(2)
        return f"multi_modal_projector.linear_{index // 2 + 1}.{rest}"
    for prefix, component, replacement in _RULES:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if component == "vision":
                return "vision_tower." + _vision_key(rest, vision_has_vision_model)
            if component == "projector":
                return "multi_modal_projector." + rest
            if component == "newline":
                return "image_newline" if rest == "" else None
            return "language_model." + replacement + rest
    return None


def _vision_key(rest: str, has_vision_model: bool) -> str:
    if has_vision_model and not rest.startswith("vision_model."):
        return "vision_model." + rest
    if not has_vision_model and rest.startswith("vision_model."):
        return rest[len("vision_model."):]
    return rest


def to_hub(key: str) -> str:
    """Our key -> the hub layout key (adds the ``vision_model.`` level vLLM and transformers 4.x expect)."""
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def to_original(key: str) -> str:
    """Our key -> the research (LLaVA-NeXT) layout key that SGLang's LLaVA models read."""
    if key.startswith("multi_modal_projector.linear_"):
        index, rest = key[len("multi_modal_projector.linear_"):].split(".", 1)
        return f"model.mm_projector.{(int(index) - 1) * 2}.{rest}"
    if key.startswith("vision_tower."):
        return "model.vision_tower.vision_tower." + to_hub(key)[len("vision_tower."):]
    if key == "image_newline":
        return "model.image_newline"
    if key.startswith("language_model."):
        return key[len("language_model."):]
    raise ValueError(f"{key}: no place in the original layout")
