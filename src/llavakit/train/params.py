"""Which parameters train, at what learning rate and weight decay: rules applied to names.

Rules are matched in order (``re.search`` on the parameter name, first match wins); a parameter no
rule matches trains at the base learning rate. Groups are keyed by (part, lr, weight decay), so they
hold under any distributed wrapper that keeps original parameters (DDP, FSDP with
use_orig_params, DeepSpeed), and each carries a ``name`` saying which part of the model it trains
(``vision``, ``projector``, ``llm``), under which its learning rate is logged.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from llavakit.train.config import ParamRule, TrainConfigError

MODULES = ("vision_tower", "multi_modal_projector", "image_newline", "language_model")
# The short name a part's learning rate is logged under; the newline vector trains with the projector.
PART_NAMES = {"vision_tower": "vision", "multi_modal_projector": "projector", "image_newline": "projector",
              "language_model": "llm"}

# Names of each module's kinds of weights in our (hub) layout: enough to tell, before any model
# exists, whether a rule list leaves anything to train (a recipe is checked before it runs).
TYPICAL_NAMES = (
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
    "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
    "multi_modal_projector.linear_1.weight",
    "multi_modal_projector.linear_2.weight",
    "image_newline",
    "language_model.model.embed_tokens.weight",
    "language_model.model.layers.0.self_attn.q_proj.weight",
    "language_model.model.layers.0.mlp.gate_proj.weight",
    "language_model.model.norm.weight",
    "language_model.lm_head.weight",
)


@dataclass(frozen=True)
class Assignment:
    name: str
    lr: float
    weight_decay: float


def _no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm scales and single vectors (image_newline) are not decayed."""
    return param.ndim < 2


def assign(
    model: nn.Module, rules: list[ParamRule], base_lr: float, weight_decay: float, always_train: tuple[str, ...] = ()
) -> list[Assignment]:
    """Freeze/unfreeze every parameter by the rules; return what trains and how.

    ``always_train``: name fragments (e.g. LoRA adapters) that train whatever the rules say.
    """
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    plan = []
    for name, param in model.named_parameters():
        rule = next((r for pattern, r in compiled if pattern.search(name)), None)
        forced = any(fragment in name for fragment in always_train)
        trains = forced or rule is None or not rule.frozen
        param.requires_grad_(trains)
        if not trains:
            continue
        lr = rule.lr if rule is not None and rule.lr is not None and not forced else base_lr
        decay = 0.0 if _no_decay(name, param) else (
            rule.weight_decay if rule is not None and rule.weight_decay is not None else weight_decay
        )
        plan.append(Assignment(name, lr, decay))
    if not plan:
        raise TrainConfigError("no parameter is trainable: every parameter matched a frozen rule")
    return plan


def typically_trained(rules: list[ParamRule]) -> list[str]:
    """The modules of which some typical weight (``TYPICAL_NAMES``) trains under ``rules``."""
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    trained = []
    for name in TYPICAL_NAMES:
        rule = next((r for pattern, r in compiled if pattern.search(name)), None)
        if (rule is None or not rule.frozen) and module_of(name) not in trained:
            trained.append(module_of(name))
    return trained


def param_groups(model: nn.Module, plan: list[Assignment]) -> list[dict]:
    """Optimizer groups, one per (part, lr, weight decay), each with a ``name``: the part
    (``vision``, ``projector``, ``llm``), with ``-2``, ``-3``... when rules give one part several
    learning rates. Groups of one part and lr that differ only in weight decay share the name (their
    learning rates are always equal)."""
    params = dict(model.named_parameters())
    groups: dict[tuple[str, float, float], dict] = OrderedDict()
    names: dict[tuple[str, float], str] = {}
    for entry in plan:
        part = part_name(entry.name)
        if (part, entry.lr) not in names:
            taken = sum(1 for other, _ in names if other == part)
            names[(part, entry.lr)] = part if not taken else f"{part}-{taken + 1}"
        key = (part, entry.lr, entry.weight_decay)
        group = groups.setdefault(key, {"params": [], "lr": entry.lr, "weight_decay": entry.weight_decay,
                                        "name": names[(part, entry.lr)], "names": []})
        group["params"].append(params[entry.name])
        group["names"].append(entry.name)
    return list(groups.values())


def part_name(name: str) -> str:
    """``vision``, ``projector`` or ``llm`` for a parameter of LLaVA (LoRA adapters are ``llm``)."""
    module = module_of(name)
    return PART_NAMES.get(module, module)


def learning_rates(groups: list[dict]) -> dict[str, float]:
    """``{"lr/<group name>": lr}`` for the optimizer's groups (unnamed ones by their index)."""
    return {f"lr/{group.get('name', index)}": group["lr"] for index, group in enumerate(groups)}


def module_of(name: str) -> str:
    for module in MODULES:
        if name.startswith(module) or f".{module}." in name:
            return module
    return name.split(".", 1)[0]


def summary(model: nn.Module, plan: list[Assignment]) -> list[dict]:
    """Per module: total and trainable parameter counts and the learning rates in use."""
    lrs = {entry.name: entry.lr for entry in plan}
    rows: dict[str, dict] = OrderedDict((m, {"module": m, "total": 0, "trainable": 0, "lrs": set()}) for m in MODULES)
    for name, param in model.named_parameters():
        row = rows.setdefault(module_of(name), {"module": module_of(name), "total": 0, "trainable": 0, "lrs": set()})
        row["total"] += param.numel()
        if name in lrs:
            row["trainable"] += param.numel()
            row["lrs"].add(lrs[name])
    return [{**row, "lrs": sorted(row["lrs"])} for row in rows.values() if row["total"]]


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'module':<24}{'parameters':>14}{'trainable':>14}  learning rate"]
    for row in rows:
        lrs = ", ".join(f"{lr:g}" for lr in row["lrs"]) or "frozen"
        lines.append(f"{row['module']:<24}{row['total']:>14,}{row['trainable']:>14,}  {lrs}")
    return "\n".join(lines)
