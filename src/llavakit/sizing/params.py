"""Parameter counts of a LLaVA model built on the meta device: per part, and trainable or frozen
under a stage's rules (the training loop's own rules, ``train.params.assign``)."""

from __future__ import annotations

import re

import torch
from torch import nn

from llavakit.config import LlavaConfig
from llavakit.model.llava import LlavaForCausalLM
from llavakit.train.config import TrainConfig
from llavakit.train.params import assign, part_name

PARTS = ("vision", "projector", "llm")


def meta_model(config: LlavaConfig) -> LlavaForCausalLM:
    """The model with every tensor on the meta device: shapes without memory, no weights read."""
    with torch.device("meta"):
        return LlavaForCausalLM.from_config(config)


def part_counts(model: nn.Module) -> dict[str, int]:
    """``{"vision", "projector", "llm", "total"}`` (the newline vector counts with the projector;
    tied embeddings once)."""
    counts = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        counts[part_name(name)] += param.numel()
    return {**counts, "total": sum(counts.values())}


def lora_linears(model: LlavaForCausalLM, targets: list[str]) -> list[nn.Linear]:
    """The LLM's linear layers peft would give adapters (``target_modules`` as name suffixes)."""
    pattern = re.compile(r"(^|\.)(" + "|".join(map(re.escape, targets)) + r")$")
    return [module for name, module in model.language_model.named_modules()
            if isinstance(module, nn.Linear) and pattern.search(name)]


def lora_count(model: LlavaForCausalLM, config: TrainConfig) -> int:
    """Adapter parameters: r * (in + out) per adapted linear layer (A: r x in, B: out x r)."""
    if config.lora is None:
        return 0
    rank = config.lora.rank
    return sum(rank * (linear.in_features + linear.out_features)
               for linear in lora_linears(model, config.lora.target_modules))


def stage_counts(model: LlavaForCausalLM, config: TrainConfig) -> dict[str, dict[str, int]]:
    """``{"trainable": {part: n, total}, "frozen": {...}, "adapters": n}`` under the rules the training loop applies;
    with LoRA the LLM's own weights are frozen and its adapters (counted in ``llm``) train."""
    from llavakit.train.loop import training_rules  # the loop's rules: unused tower head, LoRA, the stage's

    rules = training_rules(config, model.config)
    trained = {entry.name for entry in assign(model, rules, config.optim.lr, config.optim.weight_decay)}
    trainable, frozen = dict.fromkeys(PARTS, 0), dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        (trainable if name in trained else frozen)[part_name(name)] += param.numel()
    adapters = lora_count(model, config)
    trainable["llm"] += adapters
    return {"trainable": {**trainable, "total": sum(trainable.values())},
            "frozen": {**frozen, "total": sum(frozen.values())}, "adapters": adapters}
