"""Tiny random transformers LLaVA checkpoints, written to disk like released ones.

Tests (and users trying things offline) build these instead of downloading: the same config
classes, processors and file layout as llava-hf releases, with a few layers of width 32-64. The
crop (30 px, patch 7 -> 4x4 tokens) deliberately does not divide evenly, like SigLIP-384/14.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llavakit.tiny.tokenizer import train_bpe_tokenizer

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def onevision_pinpoints(crop: int, max_grid: int = 6) -> list[list[int]]:
    return [[crop * r, crop * c] for r in range(1, max_grid + 1) for c in range(1, max_grid + 1)]


def next_2401_pinpoints(crop: int) -> list[list[int]]:
    """LLaVA-NeXT 2401: crop x {2x2, 1x2, 2x1, 1x3, 3x1} as (height, width)."""
    return [[crop * 2, crop * 2], [crop, crop * 2], [crop * 2, crop], [crop, crop * 3], [crop * 3, crop]]


def _qwen2(vocab: int, hidden: int = 32) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False,
    )


def _llama(vocab: int, hidden: int = 32, bos: int = 1, eos: int = 2) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192, bos_token_id=bos, eos_token_id=eos,
    )


def _siglip(crop: int, patch: int, hidden: int = 32) -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
        image_size=crop, patch_size=patch,
    )


def _clip(crop: int, patch: int, hidden: int = 32) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3, num_attention_heads=2,
        image_size=crop, patch_size=patch, projection_dim=hidden,
    )


def build_onevision(directory: str | Path, seed: int = 0, crop: int = 30, patch: int = 7, max_grid: int = 6) -> Path:
    """A tiny llava_onevision checkpoint: SigLIP + Qwen2, anyres_max_9, (1x1)..(6x6) pinpoints."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = train_bpe_tokenizer()
    config = LlavaOnevisionConfig(
        vision_config=_siglip(crop, patch), text_config=_qwen2(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=onevision_pinpoints(crop, max_grid),
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": crop, "width": crop}, image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    return _save(directory, LlavaOnevisionForConditionalGeneration, config, tokenizer, image_processor, seed)


def build_next(directory: str | Path, seed: int = 0, crop: int = 30, patch: int = 7) -> Path:
    """A tiny llava_next checkpoint: CLIP (layer -2, CLS dropped) + Llama, 2401 pinpoints."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = llama_tokenizer()
    config = LlavaNextConfig(
        vision_config=_clip(crop, patch), text_config=_llama(len(tokenizer), bos=tokenizer.bos_token_id,
                                                             eos=tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=next_2401_pinpoints(crop),
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    return _save(directory, LlavaNextForConditionalGeneration, config, tokenizer, image_processor, seed)


def build_llava(directory: str | Path, seed: int = 0, crop: int = 28, patch: int = 7) -> Path:
    """A tiny llava (1.5) checkpoint: CLIP + Llama, one crop per image (shortest edge + centre crop)."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = llama_tokenizer()
    config = LlavaConfig(
        vision_config=_clip(crop, patch), text_config=_llama(len(tokenizer), bos=tokenizer.bos_token_id,
                                                             eos=tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    return _save(directory, LlavaForConditionalGeneration, config, tokenizer, image_processor, seed)


def llama_tokenizer() -> Any:
    return train_bpe_tokenizer(
        special_tokens=["<unk>", "<s>", "</s>", "<image>", "<video>"], eos_token="</s>", pad_token="<unk>",
        bos_token="<s>", chat_template=LLAMA_TEMPLATE,
    )


def _save(directory, model_class, config, tokenizer, image_processor, seed: int) -> Path:
    directory = Path(directory)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    image_processor.save_pretrained(str(directory))
    return directory


def build_parts(directory: str | Path, seed: int = 0, crop: int = 30, patch: int = 7) -> tuple[Path, Path]:
    """A tiny pretrained-parts pair as stage-1 starts from: a SigLIP vision model and a Qwen2 LM
    with its tokenizer, each saved on its own like released models."""
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    directory = Path(directory)
    torch.manual_seed(seed)
    vision_dir, llm_dir = directory / "vision", directory / "llm"
    SiglipVisionModel(_siglip(crop, patch)).save_pretrained(str(vision_dir))
    tokenizer = train_bpe_tokenizer()
    language_model = Qwen2ForCausalLM(_qwen2(len(tokenizer)))
    language_model.generation_config.eos_token_id = tokenizer.eos_token_id
    language_model.save_pretrained(str(llm_dir))
    tokenizer.save_pretrained(str(llm_dir))
    return vision_dir, llm_dir
