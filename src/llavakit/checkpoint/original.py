"""Configs of checkpoints in the original LLaVA-NeXT research layout (``mm_*`` keys), read and written.

Those configs are the LLM's own config plus ``mm_*`` fields; the vision tower is named by a path or
hub id (``mm_vision_tower``) whose config must be readable locally (a folder of that name inside the
checkpoint is used first, so an exported directory can be moved). The SigLIP tower of OneVision
had its last layer deleted before training, so the number of layers is read off the weights.

This is the layout SGLang's ``LlavaQwenForCausalLM`` / ``LlavaLlamaForCausalLM`` /
``LlavaMistralForCausalLM`` read. ``to_original`` writes only configs that ``config_from_original``
reads back as the same model, and refuses the rest.
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
# Research model type and architecture (what SGLang dispatches on) for each LLM type.
_RESEARCH_TYPES = {"qwen2": ("llava_qwen", "LlavaQwenForCausalLM"), "llama": ("llava_llama", "LlavaLlamaForCausalLM"),
                   "mistral": ("llava_mistral", "LlavaMistralForCausalLM")}
# Top-level keys of a research config that describe the multimodal model, not the LLM.
_MULTIMODAL_KEYS = ("image_aspect_ratio", "image_grid_pinpoints", "image_token_index", "architectures")
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


def _tower_source(directory: Path, name: str) -> str:
    """A tower folder inside the checkpoint by the name's last part (exports carry their tower), else the name."""
    inside = directory / Path(name).name
    return str(inside) if not Path(name).is_dir() and (inside / "config.json").is_file() else name


def from_original(directory: Path, hf: dict[str, Any], weight_keys: list[str]) -> LlavaConfig:
    vision = _vision_config(_tower_source(directory, hf["mm_vision_tower"]), weight_keys)
    return validate(config_from_original(directory, hf, vision), str(directory / "config.json"))


def config_from_original(directory: Path | str, hf: dict[str, Any], vision: dict[str, Any]) -> dict[str, Any]:
    """LlavaConfig data for a research config and its tower's (flattened) transformers config."""
    directory = Path(directory)
    llm_type = _LLM_TYPES.get(hf.get("model_type"), hf.get("model_type"))
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
    llm = {k: v for k, v in hf.items() if not k.startswith("mm_") and k not in _MULTIMODAL_KEYS}
    llm["model_type"] = llm_type
    return {
        # The research code takes SigLIP's last remaining layer, CLIP's second to last.
        "vision": {"hf_config": vision, "feature_layer": -1 if siglip else hf.get("mm_vision_select_layer", -2)},
        "projector": {"type": hf.get("mm_projector_type", "linear")},
        "llm": {"hf_config": llm},
        "visual": visual,
        "family": "llava_onevision" if anyres else "llava",
        **({"image_token_id": hf["image_token_index"]} if isinstance(hf.get("image_token_index"), int)
           and hf["image_token_index"] >= 0 else {}),
    }


def tower_folder_name(config: LlavaConfig) -> str:
    """The folder an export writes the tower to; SGLang picks its tower class by 'clip'/'siglip' in the path."""
    return config.vision.hf_config["model_type"].removesuffix("_model").removesuffix("_vision") + "_vision_tower"


def to_original(config: LlavaConfig, tower_path: str) -> dict[str, Any]:
    """config.json content in the research layout; a CheckpointError (before anything is written) names
    what the layout cannot express."""
    vision_type = config.vision.hf_config["model_type"]
    llm_type = config.llm.hf_config.get("model_type")
    if vision_type not in ("siglip_vision_model", "clip_vision_model"):
        raise CheckpointError(f"export --layout original: vision tower {vision_type!r} is not expressible (SigLIP or CLIP)")
    if llm_type not in _RESEARCH_TYPES:
        raise CheckpointError(f"export --layout original: LLM {llm_type!r} is not expressible "
                              f"({', '.join(sorted(_RESEARCH_TYPES))})")
    if not isinstance(config.vision.feature_layer, int):
        raise CheckpointError(f"export --layout original: vision.feature_layer={config.vision.feature_layer!r} is not "
                              "expressible (mm_vision_select_layer is one layer)")
    if not config.projector.bias:
        raise CheckpointError("export --layout original: the research projector always has biases (projector.bias false)")
    visual, siglip = config.visual, vision_type.startswith("siglip")
    anyres = visual.image_mode == "anyres"
    if anyres:
        aspect = f"anyres_max_{visual.max_grids}" if visual.max_grids else "anyres"
    else:
        aspect = "pad"
    pinpoints = visual.grid_pinpoints
    if not isinstance(pinpoints, str):  # the research code lists [width, height]
        pinpoints = [[w, h] for h, w in pinpoints]
    model_type, architecture = _RESEARCH_TYPES[llm_type]
    hf = {
        **config.llm.hf_config,
        "model_type": model_type,
        "architectures": [architecture],
        "mm_vision_tower": tower_path,
        "mm_projector_type": config.projector.type,
        "mm_hidden_size": int(config.vision.hf_config["hidden_size"]),
        "mm_vision_select_layer": -1 if siglip else config.vision.feature_layer,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad" if visual.image_newline == "row" else "flat",
        "image_aspect_ratio": aspect,
        "image_grid_pinpoints": pinpoints,
        "image_token_index": config.image_token_id,
        "tie_word_embeddings": bool(config.llm.hf_config.get("tie_word_embeddings", False)),
    }
    _refuse_changes(config, config_from_original(Path("."), hf, config.vision.hf_config))
    return hf


def _refuse_changes(config: LlavaConfig, reread: dict[str, Any]) -> None:
    """Refuse an export whose config would load back as a different model."""
    back = validate(reread, "export --layout original")
    problems = []
    if back.vision.feature_layer != config.vision.feature_layer:
        problems.append(f"vision.feature_layer={config.vision.feature_layer!r} (the layout reads "
                        f"{back.vision.feature_layer!r} for this tower)")
    if back.projector != config.projector:
        problems.append(f"projector={config.projector!r}")
    for field, value in config.visual.model_dump().items():
        if getattr(back.visual, field) != value and field != "grid_pinpoints":
            problems.append(f"visual.{field}={value!r} (the layout gives {getattr(back.visual, field)!r})")
    if back.visual.pinpoints() != config.visual.pinpoints():
        problems.append("visual.grid_pinpoints")
    if problems:
        raise CheckpointError("export --layout original would change the model: " + "; ".join(problems))


def read_config(directory: Path) -> dict[str, Any]:
    return read_json_object(directory / "config.json")
