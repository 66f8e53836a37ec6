"""Reading and writing checkpoints: native llavakit, transformers (three key layouts), export
(transformers hub layout for vLLM and transformers; original research layout for SGLang).

Every write goes to a temporary directory beside the target, renamed into place when complete,
so a killed process never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from llavakit.checkpoint import components, files, hf_config, hub, layouts, original
from llavakit.config import NATIVE_CONFIG_NAME, LlavaConfig
from llavakit.errors import CheckpointError
from llavakit.model.llava import LlavaForCausalLM
from llavakit.utils.atomic import apply_umask

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Weights a checkpoint may carry or lack without changing what the model computes: the vision
# tower's pooling head and final norm (LLaVA reads hidden states before them).
_UNUSED_VISION = ("vision_tower.head.", "vision_tower.post_layernorm.", "vision_tower.vision_model.head.",
                  "vision_tower.vision_model.post_layernorm.")


def resolve(path_or_id: str | Path) -> Path:
    """A local checkpoint directory, or the local snapshot of a hub id (downloaded if allowed)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if not hub.is_hub_id(text):
        raise CheckpointError(f"checkpoint {text!r}: no such directory")
    snapshot = hub.locate(text)  # the cache, or a refusal at once when the hub cannot supply it
    if snapshot is not None:
        return snapshot
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text))
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise CheckpointError(f"checkpoint {text!r}: not a local directory and not downloadable "
                              f"({hub.one_line(err)})") from None


# Folders a training run writes its outputs to; such a folder goes by its run's name.
RUN_OUTPUT_NAMES = ("model", "adapter")


def checkpoint_name(path_or_id: str | Path) -> str:
    """The name a checkpoint goes by (a served model's default id): its folder's name, or its run's
    name for a run's ``RUN/model`` or ``RUN/adapter``; a hub id's last part."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        path = path.resolve()
    if path.name in RUN_OUTPUT_NAMES and path.parent.name:
        return path.parent.name
    return path.name or str(path_or_id)


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / INDEX_NAME).is_file():
        index = files.read_json_object(directory / INDEX_NAME)
        if not isinstance(index.get("weight_map"), dict):
            raise CheckpointError(f"{directory / INDEX_NAME}: has no weight_map object")
        shards = [directory / name for name in sorted(set(index["weight_map"].values()))]
    else:
        shards = [directory / WEIGHTS_NAME]
    if not all(f.is_file() for f in shards):
        bins = sorted(directory.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(f"{directory}: no model.safetensors (or pytorch_model.bin) weights found")
        state = {}
        for path in bins:
            state.update(files.read_torch_weights(path))
        return state
    state = {}
    for path in shards:
        state.update(files.read_safetensors(path))
    return state


def config_for(directory: Path, weight_keys: list[str]) -> LlavaConfig:
    if (directory / NATIVE_CONFIG_NAME).is_file():
        return LlavaConfig.load(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: neither {NATIVE_CONFIG_NAME} nor config.json found")
    hf = original.read_config(directory)
    if original.is_original(hf):
        return original.from_original(directory, hf, weight_keys)
    return hf_config.from_hf(directory)


def load_tokenizer(directory: Path, config: LlavaConfig) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    missing = [t for t in (config.image_token, config.video_token) if t not in tokenizer.get_vocab()]
    if missing:  # research checkpoints mark images with id -200, not a token: give them one
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


def load(path_or_id: str | Path, dtype: torch.dtype = torch.float32) -> tuple[LlavaForCausalLM, Any, LlavaConfig]:
    """Model, tokenizer and config from any supported checkpoint directory or hub id."""
    directory = resolve(path_or_id)
    state = read_state_dict(directory)
    config = config_for(directory, list(state))
    tokenizer = load_tokenizer(directory, config)
    updates = {}
    if config.image_token_id is None or config.image_token_id != tokenizer.convert_tokens_to_ids(config.image_token):
        updates["image_token_id"] = tokenizer.convert_tokens_to_ids(config.image_token)
        updates["video_token_id"] = tokenizer.convert_tokens_to_ids(config.video_token)
    config = config.model_copy(update=updates)
    partial = _frozen_parts_absent(state, config)
    if partial:  # a connector-only checkpoint (stage-1): the frozen parts come from their sources
        model, _ = components.build_from_parts(config.model_dump(mode="json"), str(directory))
    else:
        model = LlavaForCausalLM.from_config(config)
    load_weights(model, state, str(directory), allow_missing=partial)
    return model.to(dtype).eval(), tokenizer, config


def _frozen_parts_absent(state: dict[str, torch.Tensor], config: LlavaConfig) -> tuple[str, ...]:
    if not components.parts_available(config):
        return ()
    present = {key.split(".", 1)[0] for key in state}
    return tuple(p + "." for p in ("vision_tower", "language_model") if p not in present)


def load_weights(
    model: LlavaForCausalLM, state: dict[str, torch.Tensor], source: str, allow_missing: tuple[str, ...] = ()
) -> None:
    """Copy converted weights in; any missing, unexpected or mis-shaped weight is an error
    (except under ``allow_missing`` prefixes, parts already loaded from elsewhere)."""
    own = model.state_dict()
    has_vision_model = any(k.startswith("vision_tower.vision_model.") for k in own)
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        native = layouts.to_native(key, has_vision_model)
        if native is None or native not in own:
            if not (native or key).startswith(_UNUSED_VISION):
                unexpected.append(key)
            continue
        converted[native] = tensor
    tied = bool(getattr(model.language_model.config, "tie_word_embeddings", False))
    missing = [
        k for k in own
        if k not in converted and not k.startswith(_UNUSED_VISION + tuple(allow_missing))
        and not (tied and k.endswith("lm_head.weight"))
    ]
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in converted.items() if tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    for title, items in (("missing weights", missing), ("unexpected weights", unexpected), ("mis-shaped weights", wrong)):
        if items:
            problems.append(f"{len(items)} {title}: " + ", ".join(items[:5]) + (" ..." if len(items) > 5 else ""))
    if problems:
        raise CheckpointError(f"checkpoint {source}: " + "; ".join(problems))
    model.load_state_dict(converted, strict=False)
    if tied:
        model.language_model.tie_weights()


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block completes.

    What appears under ``target`` has the modes of the process umask, as ``mkdir`` and ``cp``
    would give it, not the private ones of the staging directory."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        apply_umask(staging)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _weights_for_saving(
    model: LlavaForCausalLM, rename=lambda k: k, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    tied = bool(getattr(model.language_model.config, "tie_word_embeddings", False))
    state = {}
    for key, tensor in (state_dict if state_dict is not None else model.state_dict()).items():
        if tied and key.endswith("lm_head.weight"):
            continue  # shares storage with the input embeddings; safetensors stores it once
        state[rename(key)] = tensor.detach().contiguous().cpu()
    return state


def save(
    model: LlavaForCausalLM, tokenizer: Any, directory: str | Path, connector_only: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Native checkpoint: llavakit_config.json, model.safetensors, tokenizer files.

    ``connector_only`` keeps just the projector and newline vector; the config's ``pretrained``
    paths then supply the vision tower and LLM when the checkpoint is loaded.
    """
    if connector_only and not components.parts_available(model.config):
        raise CheckpointError("connector-only save needs vision.pretrained and llm.pretrained in the model config")
    weights = _weights_for_saving(model, state_dict=state_dict)  # state_dict: gathered from shards
    if connector_only:
        weights = {k: v for k, v in weights.items() if not k.startswith(("vision_tower.", "language_model."))}
    with atomic_directory(directory) as staging:
        model.config.save(staging)
        save_file(weights, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(staging))
    return Path(directory)


def export_hf(model: LlavaForCausalLM, tokenizer: Any, directory: str | Path) -> Path:
    """A transformers checkpoint in the hub layout (config.json + processor files + weights)."""
    config = model.config
    hf = hf_config.to_hf(config)  # raises before anything is written if the family cannot express the model
    with atomic_directory(directory) as staging:
        (staging / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        for name, content in hf_config.processor_files(config).items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
        save_file(_weights_for_saving(model, layouts.to_hub), str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(staging))
        if getattr(tokenizer, "chat_template", None):
            (staging / "chat_template.jinja").write_text(tokenizer.chat_template)
        generation = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return Path(directory)


_TOWER_CLASSES = {"siglip_vision_model": "SiglipVisionModel", "clip_vision_model": "CLIPVisionModel"}


def export_original(model: LlavaForCausalLM, tokenizer: Any, directory: str | Path) -> Path:
    """A checkpoint in the LLaVA-NeXT research layout (``mm_*`` config keys, ``model.mm_projector.{0,2}``),
    with the vision tower also as its own transformers folder, which ``mm_vision_tower`` names."""
    config = model.config
    tower_name = original.tower_folder_name(config)
    tower_path = str(Path(directory).expanduser().resolve() / tower_name)
    hf = original.to_original(config, tower_path)  # raises before anything is written if the layout cannot express it
    weights = _weights_for_saving(model, layouts.to_original)
    tower = {"vision_model." + k[len("model.vision_tower.vision_tower.vision_model."):]: v
             for k, v in weights.items() if k.startswith("model.vision_tower.vision_tower.")}
    tower_config = {**config.vision.hf_config, "architectures": [_TOWER_CLASSES[config.vision.hf_config["model_type"]]]}
    with atomic_directory(directory) as staging:
        (staging / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file(weights, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / tower_name).mkdir()
        (staging / tower_name / "config.json").write_text(json.dumps(tower_config, indent=2) + "\n")
        save_file(tower, str(staging / tower_name / WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(staging))
        if getattr(tokenizer, "chat_template", None):
            (staging / "chat_template.jinja").write_text(tokenizer.chat_template)
    return Path(directory)


EXPORTERS = {"hf": export_hf, "original": export_original}
