"""The tiny pretrained parts that the quickstart's LLaVA stages start from, trained on the world.

    from llavakit.quickstart import ComponentSettings, prepare_components
    parts = prepare_components(world_dir, cache_dir, ComponentSettings())
    parts.vision_dir   # a transformers SiglipVisionModel (+ image processor)
    parts.llm_dir      # a transformers Qwen2ForCausalLM + its ChatML BPE tokenizer
    build_from_parts({"vision": {"pretrained": str(parts.vision_dir), "feature_layer": parts.vision_feature_layer},
                      "llm": {"pretrained": str(parts.llm_dir)}, "visual": {...}})

Each part is cached on its own under a hash of (world, its settings, code version): a second call
returns at once, and changing only the LM's settings leaves the vision tower's entry in use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from llavakit.quickstart import runtime
from llavakit.quickstart.cache import Entry, cached_build
from llavakit.quickstart.language import train_language
from llavakit.quickstart.settings import COMPONENTS_VERSION, ComponentSettings
from llavakit.quickstart.vision import FEATURE_LAYER, train_vision
from llavakit.quickstart.world_data import read_manifest, world_identity

VISION_ENTRY, LANGUAGE_ENTRY = "vision", "llm"


@dataclass
class Components:
    vision_dir: Path
    llm_dir: Path
    # {"vision": {...probes, losses, train_seconds}, "language": {...perplexity, losses, train_seconds},
    #  "cached": {"vision": bool, "language": bool}, "seconds": this call's wall time}
    metrics: dict = field(default_factory=dict)
    # The hidden_states index LLaVA should read (vision.feature_layer). The contrastive heads pool
    # the last layer, so -1 holds the trained features; llavakit's default of -2 (the CLIP-L
    # convention) would read one layer earlier, with weaker shape features.
    vision_feature_layer: int = FEATURE_LAYER


def component_key(world_dir: Path, settings: ComponentSettings, part: str) -> dict:
    return {
        "component": part,
        "code_version": COMPONENTS_VERSION,
        "world": world_identity(read_manifest(world_dir)),
        **settings.key_data(part),
    }


def prepare_components(
    world_dir: str | Path, cache_dir: str | Path, settings: ComponentSettings | None = None, progress: bool = True
) -> Components:
    """Train (or fetch from ``cache_dir``) the vision tower and the LM for the world in ``world_dir``."""
    start = time.perf_counter()
    world_dir, cache_dir = Path(world_dir), Path(cache_dir)
    settings = settings or ComponentSettings()
    with runtime.cpu_threads(settings.threads):
        vision = cached_build(cache_dir, VISION_ENTRY, component_key(world_dir, settings, "vision"),
                              lambda out: train_vision(world_dir, out, settings, progress))
        language = cached_build(cache_dir, LANGUAGE_ENTRY, component_key(world_dir, settings, "language"),
                                lambda out: train_language(world_dir, out, settings, progress))
    return Components(vision.path, language.path, _metrics(vision, language, time.perf_counter() - start))


def _metrics(vision: Entry, language: Entry, seconds: float) -> dict:
    return {
        "vision": vision.manifest["metrics"],
        "language": language.manifest["metrics"],
        "cached": {"vision": vision.hit, "language": language.hit},
        "seconds": round(seconds, 3),
    }
