"""Model shapes for the benchmarks, and the same random weights in transformers' model and ours.

Shapes (random weights; no download):

| shape | vision tower | LLM |
|---|---|---|
| tiny | SigLIP 30 px / patch 7, width 32, 2 layers | Qwen2 width 32, 2 layers (the tests' checkpoint) |
| quickstart | SigLIP 64 px / patch 16, width 64, 4 layers | Qwen2 width 128, 4 layers (the quickstart model's shape, from its settings) |
| 0.5b | SigLIP-so400m/14-384, 26 layers | Qwen2-0.5B (24 layers, width 896, 152K vocab, tied) |
| 0.5b-lm | the quickstart's tower | Qwen2-0.5B: the 0.5B language model's decode on a CPU, without a 400M tower |
| 1.5b | SigLIP-so400m/14-384, 26 layers | Qwen2-1.5B (28 layers, width 1536, tied) |
| 7b | SigLIP-so400m/14-384, 26 layers | Qwen2-7B (28 layers, width 3584, 152K vocab) |

All use OneVision's geometry (anyres_max_9, (1x1)..(6x6) pinpoints; 4x4 for tiny and quickstart).
``build_pair`` builds transformers' ``LlavaOnevisionForConditionalGeneration`` and copies its weights
into our ``LlavaForCausalLM`` through the same converter ``llavakit.load`` uses.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26, "num_attention_heads": 16,
                 "image_size": 384, "patch_size": 14}
QWEN2 = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
}


def _quickstart_shape() -> tuple[dict[str, Any], dict[str, Any]]:
    """The quickstart's tower and LM shapes, read from its settings so the two never drift apart."""
    from llavakit.quickstart.contrastive import tower_config
    from llavakit.quickstart.settings import LanguageSettings, VisionSettings

    tower, text = tower_config(VisionSettings()), LanguageSettings()
    vision_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                   "patch_size")
    # The LM's config needs the world's tokenizer (quickstart.language.model_config); the bench sets its vocab.
    return ({key: getattr(tower, key) for key in vision_keys},
            {"hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
             "num_hidden_layers": text.num_layers, "num_attention_heads": text.num_heads,
             "num_key_value_heads": text.num_kv_heads, "tie_word_embeddings": False})


SMALL = {
    "tiny": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 30, "patch_size": 7},
             {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "tie_word_embeddings": False}),
    "quickstart": _quickstart_shape(),
}
SHAPES = ("tiny", "quickstart", "0.5b-lm", "0.5b", "1.5b", "7b")


def shape_configs(shape: str, vocab: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(vision kwargs, text kwargs, largest grid side) of a shape; ``vocab`` for the small shapes."""
    if shape in SMALL:
        vision, text = SMALL[shape]
        return dict(vision), dict(text, vocab_size=vocab, max_position_embeddings=8192), 4
    if shape == "0.5b-lm":
        return dict(SMALL["quickstart"][0]), dict(QWEN2["0.5b"], max_position_embeddings=32768,
                                                  rope_theta=1_000_000.0), 4
    return dict(SIGLIP_SO400M), dict(QWEN2[shape], max_position_embeddings=32768, rope_theta=1_000_000.0), 6


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (a 7B model never exists in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def processor_class_check_off() -> None:
    """transformers' ProcessorMixin refuses to build without torchvision (as in tests/conftest.py)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        from transformers.processing_utils import ProcessorMixin

        ProcessorMixin.check_argument_for_proper_class = lambda *args, **kwargs: None


@dataclass
class Pair:
    shape: str
    hf: Any  # LlavaOnevisionForConditionalGeneration
    ours: Any  # llavakit.api.Llava
    hf_processor: Any  # LlavaOnevisionProcessor (PIL image processor)
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> dict[str, Any]:
        model = self.ours.model
        vision, text = model.vision_tower.config, model.language_model.config
        return {"shape": self.shape, "dtype": str(self.dtype).replace("torch.", ""),
                "vision": f"{vision.num_hidden_layers}L w{vision.hidden_size} {vision.image_size}px/{vision.patch_size}",
                "llm": f"{text.num_hidden_layers}L w{text.hidden_size} vocab {text.vocab_size}",
                "params": sum(p.numel() for p in model.parameters())}


def hf_config(shape: str, tokenizer: Any, attn: str = "sdpa"):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    from llavakit.tiny import checkpoints

    vision, text, grid = shape_configs(shape, len(tokenizer))
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**vision), text_config=Qwen2Config(**text),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=checkpoints.onevision_pinpoints(vision["image_size"], grid),
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    config._attn_implementation = attn
    return config


def build_pair(shape: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
               attn: str = "sdpa", with_hf: bool = True) -> Pair:
    """transformers' model and ours with the same random weights (``with_hf=False``: ours only)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from llavakit.api import Llava
    from llavakit.checkpoint import hf_config as hf_config_io
    from llavakit.checkpoint import io
    from llavakit.model.llava import LlavaForCausalLM
    from llavakit.tiny.tokenizer import train_bpe_tokenizer

    processor_class_check_off()
    tokenizer = train_bpe_tokenizer()
    config = hf_config(shape, tokenizer, attn)
    hf_processor = build_processor(config, tokenizer)
    image_processor = hf_processor.image_processor
    with tempfile.TemporaryDirectory() as folder:  # config files only: llavakit reads its config from them
        config.save_pretrained(folder)
        image_processor.save_pretrained(folder)
        ours_config = hf_config_io.from_hf(Path(folder))
    ours_config = ours_config.model_copy(update={"image_token_id": config.image_token_id,
                                                 "video_token_id": config.video_token_id})
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        hf = LlavaOnevisionForConditionalGeneration(config).eval()
        ours = LlavaForCausalLM.from_config(ours_config).eval()
    hf, ours = hf.to(dtype), ours.to(dtype)  # whatever dtype a sub-config asked for, both run in ``dtype``
    if attn != "sdpa":  # e.g. flash_attention_2 (needs the flash-attn package) for both, tower and LLM
        hf.set_attn_implementation(attn)
        ours.language_model.set_attn_implementation(attn)
        ours.vision_tower.set_attn_implementation(attn)
    io.load_weights(ours, hf.state_dict(), f"transformers {shape}")
    hf.generation_config.pad_token_id = tokenizer.pad_token_id
    if not with_hf:
        del hf
        hf = None
    return Pair(shape, hf, Llava(ours, tokenizer), hf_processor, tokenizer, torch.device(device), dtype)


def save_checkpoint(shape: str, directory: str | Path, seed: int = 0) -> Path:
    """A transformers llava_onevision checkpoint of ``shape`` with random weights (bf16 for the big
    shapes), loadable by ``llavakit.load``, ``llavakit serve`` and transformers."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from llavakit.tiny.tokenizer import train_bpe_tokenizer

    processor_class_check_off()
    tokenizer = train_bpe_tokenizer()
    config = hf_config(shape, tokenizer)
    torch.manual_seed(seed)
    with default_dtype(torch.float32 if shape in SMALL else torch.bfloat16):
        model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    directory = Path(directory)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    build_processor(config, tokenizer).image_processor.save_pretrained(str(directory))
    return directory


def torchvision_processor(pair: Pair):
    """transformers' torchvision-backed OneVision processor with the pair's settings, or None without torchvision."""
    try:
        import torchvision  # noqa: F401
        from transformers import LlavaOnevisionProcessor
        from transformers.models.llava_onevision.image_processing_llava_onevision import (
            LlavaOnevisionImageProcessor,
        )
    except ImportError:
        return None
    pil = pair.hf_processor
    image_processor = LlavaOnevisionImageProcessor(
        size=dict(pil.image_processor.size), image_grid_pinpoints=pil.image_processor.image_grid_pinpoints,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    return LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=pair.tokenizer,
                                   num_image_tokens=pil.num_image_tokens, vision_feature_select_strategy="full",
                                   vision_aspect_ratio="anyres_max_9", chat_template=pair.tokenizer.chat_template)


def build_processor(config, tokenizer):
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    crop = config.vision_config.image_size
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": crop, "width": crop}, image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        num_image_tokens=(crop // config.vision_config.patch_size) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=tokenizer.chat_template,
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a random-weight checkpoint of a benchmark shape "
                                                 "(e.g. for bench/serve_load.py --model).")
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--save", required=True, help="output directory")
    cli = parser.parse_args()
    print(save_checkpoint(cli.shape, cli.save))
