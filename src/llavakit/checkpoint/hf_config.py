"""transformers' llava / llava_next / llava_onevision configs <-> LlavaConfig.

The transformers config says which tower, LLM and pinpoints; the processor files say crop size,
mean/std and resampling. Family defaults fill in what neither states (OneVision pads extra images
to squares and pools video by 2; NeXT tiles every image; LLaVA-1.5 uses one crop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llavakit.checkpoint.files import read_json_object
from llavakit.config import LlavaConfig, validate
from llavakit.errors import CheckpointError

FAMILIES = ("llava_onevision", "llava_next", "llava")
_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's content, {} when the file is absent; a CheckpointError names a bad one."""
    return read_json_object(path) if path.is_file() else {}


def processor_settings(directory: Path) -> dict[str, Any]:
    """Image settings from preprocessor_config.json (or processor_config.json's image_processor)."""
    settings = _read_json(directory / "preprocessor_config.json")
    if not settings:
        settings = _read_json(directory / "processor_config.json").get("image_processor", {})
    return settings


def max_grids_from_aspect(vision_aspect_ratio: str | None) -> int | None:
    """'anyres_max_9' -> 9; plain 'anyres' (or nothing) -> no thresholding."""
    if vision_aspect_ratio and vision_aspect_ratio.startswith("anyres_max_"):
        return int(vision_aspect_ratio[len("anyres_max_"):])
    return None


def family_visual(family: str, hf: dict[str, Any], crop: int, pre: dict[str, Any]) -> dict[str, Any]:
    visual: dict[str, Any] = {"crop_size": crop}
    if "image_mean" in pre:
        visual["image_mean"] = list(pre["image_mean"])
        visual["image_std"] = list(pre["image_std"])
    if "resample" in pre:
        visual["resample"] = _RESAMPLE_NAMES.get(pre["resample"], "bicubic")
    if hf.get("image_grid_pinpoints"):
        visual["grid_pinpoints"] = hf["image_grid_pinpoints"]
    if family == "llava_onevision":
        visual |= {"max_grids": max_grids_from_aspect(hf.get("vision_aspect_ratio", "anyres_max_9"))}
    elif family == "llava_next":
        visual |= {
            "max_grids": None, "multi_image_mode": "anyres", "multi_image_newline": "row",
            "video_newline": "none",
        }
    else:  # llava (1.5): one crop per image, no newline vector
        clip_style = pre.get("do_center_crop") and "shortest_edge" in pre.get("size", {})
        mode = "pad_square" if pre.get("do_pad") else ("resize_crop" if clip_style else "squash")
        visual |= {
            "image_mode": mode, "image_newline": "none", "multi_image_mode": mode, "multi_image_newline": "none",
            "max_grids": None, "video_newline": "none", "grid_pinpoints": [[crop, crop]],
        }
    return visual


def from_hf(directory: str | Path) -> LlavaConfig:
    """LlavaConfig for a transformers llava_onevision / llava_next / llava checkpoint directory."""
    directory = Path(directory)
    hf = _read_json(directory / "config.json")
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(f"{directory}/config.json: model_type {family!r} is not one of {', '.join(FAMILIES)}")
    vision, text = dict(hf["vision_config"]), dict(hf["text_config"])
    crop = int(vision["image_size"])
    layer = hf.get("vision_feature_layer", -2)
    strategy = hf.get("vision_feature_select_strategy", "default")
    data = {
        "vision": {"hf_config": vision, "feature_layer": layer, "cls_token": "drop" if strategy == "default" else "keep"},
        "projector": {"type": "mlp2x_gelu", "bias": hf.get("multimodal_projector_bias", True)},
        "llm": {"hf_config": text},
        "visual": family_visual(family, hf, crop, processor_settings(directory)),
        "image_token_id": hf.get("image_token_index", hf.get("image_token_id")),
        "video_token_id": hf.get("video_token_index", hf.get("video_token_id")),
        "family": family,
    }
    if hf.get("projector_hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{directory}: projector_hidden_act {hf['projector_hidden_act']!r} is not supported (gelu)")
    return validate(data, str(directory / "config.json"))


def to_hf(config: LlavaConfig) -> dict[str, Any]:
    """transformers config.json content for ``config.family``; refuses what the family cannot express."""
    family, visual = config.family, config.visual
    if config.projector.type != "mlp2x_gelu":
        raise CheckpointError(f"export: transformers {family} needs projector mlp2x_gelu, not {config.projector.type}")
    problems = []
    if family == "llava_onevision":
        expected = {"image_mode": "anyres", "image_newline": "row", "multi_image_mode": "pad_square",
                    "multi_image_newline": "image", "reduce_method": "bilinear", "reduce_position": "after_projector",
                    "video_pool_factor": 2, "video_pool_method": "bilinear", "video_newline": "video"}
    elif family == "llava_next":
        expected = {"image_mode": "anyres", "image_newline": "row", "max_grids": None}
    else:
        expected = {"image_newline": "none", "multi_image_newline": "none"}
    for field, value in expected.items():
        if getattr(visual, field) != value:
            problems.append(f"visual.{field}={getattr(visual, field)!r} (transformers {family} has {value!r})")
    if problems:
        raise CheckpointError(f"export to transformers {family} would change the model: " + "; ".join(problems))
    hf: dict[str, Any] = {
        "model_type": family,
        "architectures": [{"llava_onevision": "LlavaOnevisionForConditionalGeneration",
                           "llava_next": "LlavaNextForConditionalGeneration",
                           "llava": "LlavaForConditionalGeneration"}[family]],
        "vision_config": config.vision.hf_config,
        "text_config": config.llm.hf_config,
        "image_token_index": config.image_token_id,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": config.projector.bias,
        "vision_feature_layer": config.vision.feature_layer,
        "vision_feature_select_strategy": "default" if config.vision.cls_token == "drop" else "full",
        "tie_word_embeddings": bool(config.llm.hf_config.get("tie_word_embeddings", False)),
    }
    if family != "llava":
        hf["image_grid_pinpoints"] = [list(p) for p in visual.pinpoints()]
    if family == "llava_onevision":
        hf["video_token_index"] = config.video_token_id
        hf["vision_aspect_ratio"] = f"anyres_max_{visual.max_grids}" if visual.max_grids else "anyres"
    return hf


def processor_files(config: LlavaConfig) -> dict[str, dict[str, Any]]:
    """preprocessor_config.json and processor_config.json for an exported directory."""
    visual, crop = config.visual, config.visual.crop_size
    image_processor = {
        "image_processor_type": {"llava_onevision": "LlavaOnevisionImageProcessor",
                                 "llava_next": "LlavaNextImageProcessor",
                                 "llava": "LlavaImageProcessor"}[config.family],
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": list(visual.image_mean), "image_std": list(visual.image_std),
        "resample": {"bilinear": 2, "bicubic": 3}[visual.resample],
    }
    if config.family == "llava_onevision":
        image_processor |= {"size": {"height": crop, "width": crop}, "do_pad": True,
                            "image_grid_pinpoints": [list(p) for p in visual.pinpoints()]}
    elif config.family == "llava_next":
        image_processor |= {"size": {"shortest_edge": crop}, "crop_size": {"height": crop, "width": crop},
                            "do_center_crop": True, "do_pad": True,
                            "image_grid_pinpoints": [list(p) for p in visual.pinpoints()]}
    else:
        image_processor |= {"size": {"height": crop, "width": crop}, "do_center_crop": False,
                            "do_pad": visual.image_mode == "pad_square"}
    side = config.tokens_per_side
    processor = {
        "processor_class": {"llava_onevision": "LlavaOnevisionProcessor", "llava_next": "LlavaNextProcessor",
                            "llava": "LlavaProcessor"}[config.family],
        "image_token": config.image_token,
        "vision_feature_select_strategy": "default" if config.vision.cls_token == "drop" else "full",
        "patch_size": config.vision.patch_size,
    }
    if config.family == "llava_onevision":
        processor |= {"num_image_tokens": side * side, "video_token": config.video_token,
                      "vision_aspect_ratio": f"anyres_max_{visual.max_grids}" if visual.max_grids else "anyres"}
    return {"preprocessor_config.json": image_processor, "processor_config.json": processor}
