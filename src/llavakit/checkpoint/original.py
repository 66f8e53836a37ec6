"""Configs of checkpoints written by the original LLaVA-NeXT research code (``mm_*`` keys).

Those configs are the LLM's own config plus ``mm_*`` fields; the vision tower is named by a path or
hub id (``mm_vision_tower``) whose config must be readable locally. The SigLIP tower of OneVision
had its last layer deleted before training, so the number of layers is read off the weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from llavakit.checkpoint.files import read_json_object
from llavakit.config import LlavaConfig, validate
from llavakit.errors import CheckpointError

_LLM_TYPES = {"llava_qwen": "qwen2", "llava_llama": "llama", "llava_mistral": "mistral", "llava_mixtral": "mixtral"}
_LAYER = re.compile(r"vision_tower\.vision_tower\.vision_model\.encoder\.layers\.(\d+)\.")


def is_original(hf: dict[str, Any]) -> bool:
    return "mm_projector_type" in hf or "mm_vision_tower" in hf


def _vision_config(name: str, weight_keys: list[str]) -> dict[str, Any]:
    try:
        vision = AutoConfig.from_pretrained(name).to_dict()
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"mm_vision_tower {name!r}: its config cannot be read locally ({err}); "
            "point mm_vision_tower at a local copy of the vision model"
        ) from None
    if vision.get("model_type") in ("siglip", "clip"):
        vision = {**vision["vision_config"], "model_type": vision["model_type"] + "_vision_model"}
    layers = {int(m.group(1)) for k in weight_keys if (m := _LAYER.search(k))}
    if layers:
        vision["num_hidden_layers"] = max(layers) + 1
    return vision


def from_original(directory: Path, hf: dict[str, Any], weight_keys: list[str]) -> LlavaConfig:
    llm_type = _LLM_TYPES.get(hf.get("model_type"), hf.get("model_type"))
    vision = _vision_config(hf["mm_vision_tower"], weight_keys)
    siglip = vision["model_type"].startswith("siglip")
    merge = hf.get("mm_patch_merge_type", "spatial_unpad")
    if merge not in ("spatial_unpad", "flat"):
        raise CheckpointError(f"{directory}: mm_patch_merge_type {merge!r} is not supported (spatial_unpad, flat)")
    aspect = hf.get("image_aspect_ratio", "pad")
    anyres = aspect.startswith("anyres")
    crop = int(vision["image_size"])
    pinpoints = hf.get("image_grid_pinpoints") or [[crop, crop]]
    if not isinstance(pinpoints, str):  # the research code lists [width, height]
        pinpoints = [[h, w] for w, h in pinpoints]
    visual = {
        "crop_size": crop,
        "image_mode": "anyres" if anyres else "pad_square",
        "grid_pinpoints": pinpoints,
        "max_grids": int(aspect[len("anyres_max_"):]) if aspect.startswith("anyres_max_") else None,
        "image_newline": "row" if anyres and merge == "spatial_unpad" else "none",
        "multi_image_newline": "image" if anyres else "none",
        "video_newline": "video" if anyres else "none",
    }
    if siglip:
        visual |= {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    else:
        visual |= {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
    llm = {k: v for k, v in hf.items() if not k.startswith("mm_") and k not in ("image_grid_pinpoints",)}
    llm["model_type"] = llm_type
    data = {
        # The research code takes SigLIP's last remaining layer, CLIP's second to last.
        "vision": {"hf_config": vision, "feature_layer": -1 if siglip else hf.get("mm_vision_select_layer", -2)},
        "projector": {"type": hf.get("mm_projector_type", "linear")},
        "llm": {"hf_config": llm},
        "visual": visual,
        "family": "llava_onevision" if anyres else "llava",
    }
    return validate(data, str(directory / "config.json"))


def read_config(directory: Path) -> dict[str, Any]:
    return read_json_object(directory / "config.json")
