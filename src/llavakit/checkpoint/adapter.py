"""LoRA adapters in peft's own format: save a run's adapter, merge it, load base + adapter.

LoRA wraps the language model (``model.language_model``) with peft, so an adapter directory is
what peft's ``save_pretrained`` writes for it (``adapter_config.json``, ``adapter_model.safetensors``):
``peft.PeftModel.from_pretrained(base.model.language_model, ADAPTER)`` loads it onto the base
checkpoint's LLM. Parts outside the LLM that trained with the adapters (projector, newline vector,
vision tower) are not peft's to save; their weights go beside it in
``non_lora_trainables.safetensors`` (LLaVA's name for the same file), under llavakit's keys.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llavakit.errors import CheckpointError
from llavakit.model.llava import LlavaForCausalLM

ADAPTER_CONFIG_NAME = "adapter_config.json"
NON_LORA_NAME = "non_lora_trainables.safetensors"
LLM_PREFIX = "language_model."


def has_adapter(model: LlavaForCausalLM) -> bool:
    return hasattr(model.language_model, "peft_config")


def trained_outside_llm(model: LlavaForCausalLM) -> list[str]:
    """Names of the parameters that train outside the LLM (the adapter's companions)."""
    return [name for name, param in model.named_parameters()
            if param.requires_grad and not name.startswith(LLM_PREFIX)]


def save_adapter(model: LlavaForCausalLM, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
                 ) -> Path:
    """Write the adapter directory (atomic). ``state_dict``: the full model's weights gathered from
    shards (FSDP); without it the model's own weights are read."""
    from llavakit.checkpoint.io import atomic_directory

    if not has_adapter(model):
        raise CheckpointError("the model has no LoRA adapter to save")
    full = state_dict if state_dict is not None else model.state_dict()
    llm_state = {k[len(LLM_PREFIX):]: v for k, v in full.items() if k.startswith(LLM_PREFIX)}
    companions = {name: full[name].detach().contiguous().cpu() for name in trained_outside_llm(model)}
    with atomic_directory(directory) as staging:
        model.language_model.save_pretrained(str(staging), state_dict=llm_state)
        if companions:
            save_file(companions, str(staging / NON_LORA_NAME), metadata={"format": "pt"})
    return Path(directory)


def merged(model: LlavaForCausalLM, state_dict: dict[str, torch.Tensor] | None = None) -> LlavaForCausalLM:
    """A copy of the model with its adapters merged into the LLM's weights (the model itself keeps
    training). ``state_dict``: weights gathered from shards, loaded into a fresh unsharded copy."""
    if state_dict is None:
        copied = copy.deepcopy(model)
    else:
        from peft import get_peft_model

        copied = LlavaForCausalLM.from_config(model.config)
        copied.language_model = get_peft_model(copied.language_model,
                                               copy.deepcopy(model.language_model.peft_config["default"]))
        copied.load_state_dict(state_dict)
    if has_adapter(copied):
        copied.language_model = copied.language_model.merge_and_unload()
    return copied


def merge_adapter(model: LlavaForCausalLM, adapter: str | Path) -> LlavaForCausalLM:
    """Load an adapter directory onto a base model and merge it in: the model a LoRA run ends with."""
    try:
        from peft import PeftModel
    except ImportError:
        raise CheckpointError(f"adapter {adapter}: loading a LoRA adapter needs peft "
                              "(pip install 'llavakit[train]')") from None
    directory = Path(adapter).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"adapter {adapter}: no such directory")
    if not (directory / ADAPTER_CONFIG_NAME).is_file():
        raise CheckpointError(f"adapter {adapter}: no {ADAPTER_CONFIG_NAME} (not a peft adapter directory)")
    if (directory / NON_LORA_NAME).is_file():
        _load_companions(model, load_file(str(directory / NON_LORA_NAME)), directory)
    try:
        peft_model = PeftModel.from_pretrained(model.language_model, str(directory))
    except (ValueError, RuntimeError, KeyError) as err:  # target modules absent, mis-shaped weights
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__  # first problem
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise CheckpointError(f"adapter {adapter}: does not fit the base model's LLM: {detail}{more}") from None
    model.language_model = peft_model.merge_and_unload()
    return model


def _load_companions(model: LlavaForCausalLM, weights: dict[str, torch.Tensor], directory: Path) -> None:
    own = model.state_dict()
    unknown = [k for k in weights if k not in own]
    wrong = [f"{k}: adapter {tuple(v.shape)}, model {tuple(own[k].shape)}"
             for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if unknown or wrong:
        problems = "; ".join(f"{len(items)} {title}: " + ", ".join(items[:5])
                             for title, items in (("unknown weights", unknown), ("mis-shaped weights", wrong)) if items)
        raise CheckpointError(f"adapter {directory}: {NON_LORA_NAME} does not fit the base model ({problems})")
    model.load_state_dict(weights, strict=False)
