"""Building a model from pretrained parts: a transformers vision tower, a causal LM, a new projector.

This is where stage-1 starts (seeds 000, 003): both parts pretrained and frozen, the projector and
newline vector freshly initialised. The tokenizer is the LLM's, given ``<image>`` and ``<video>``
tokens if it lacks them (the embedding matrix grows to match).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from llavakit.config import DUAL_ENCODER_TYPES, LlavaConfig, validate
from llavakit.errors import CheckpointError
from llavakit.model.llava import LlavaForCausalLM


def load_vision_tower(path: str) -> torch.nn.Module:
    """A transformers vision model; for a dual encoder (CLIP/SigLIP) checkpoint, its vision half."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"vision tower {path!r}: cannot read its config ({err})") from None
    if config.model_type in DUAL_ENCODER_TYPES:
        from transformers import CLIPVisionModel, SiglipVisionModel

        vision_class = SiglipVisionModel if config.model_type == "siglip" else CLIPVisionModel
        return vision_class.from_pretrained(path)
    return AutoModel.from_pretrained(path)


def load_language_model(path: str) -> tuple[torch.nn.Module, Any]:
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"language model {path!r}: cannot load ({err})") from None
    return model, tokenizer


def add_media_tokens(tokenizer: Any, language_model: torch.nn.Module, tokens: tuple[str, str]) -> None:
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if len(tokenizer) > language_model.get_input_embeddings().weight.shape[0]:
        language_model.resize_token_embeddings(len(tokenizer))


def build_from_parts(data: dict[str, Any], source: str = "model.build") -> tuple[LlavaForCausalLM, Any]:
    """Model and tokenizer from LlavaConfig data whose vision/llm give ``pretrained`` paths."""
    vision_spec, llm_spec = dict(data.get("vision", {})), dict(data.get("llm", {}))
    if not vision_spec.get("pretrained") or not llm_spec.get("pretrained"):
        raise CheckpointError(f"{source}: vision.pretrained and llm.pretrained must both name a model")
    tower = load_vision_tower(vision_spec["pretrained"])
    language_model, tokenizer = load_language_model(llm_spec["pretrained"])
    image_token, video_token = data.get("image_token", "<image>"), data.get("video_token", "<video>")
    add_media_tokens(tokenizer, language_model, (image_token, video_token))
    vision_config = tower.config.to_dict()
    visual = {"crop_size": vision_config["image_size"], **data.get("visual", {})}
    config = validate({
        **data,
        "vision": {**vision_spec, "hf_config": vision_config},
        "llm": {**llm_spec, "hf_config": language_model.config.to_dict()},
        "visual": visual,
        "image_token_id": tokenizer.convert_tokens_to_ids(image_token),
        "video_token_id": tokenizer.convert_tokens_to_ids(video_token),
    }, source)
    return LlavaForCausalLM(config, tower, language_model), tokenizer


def parts_available(config: LlavaConfig) -> bool:
    return bool(config.vision.pretrained and config.llm.pretrained)
