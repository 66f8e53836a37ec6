"""The plan of a real model's recipe: parameters per part and per stage, visual tokens per medium,
FLOPs per sample and memory per GPU in each distributed mode, as data (``--json``) or tables."""

from __future__ import annotations

from typing import Any

from llavakit.recipe.model_recipe import DataStage, ModelRecipe
from llavakit.sizing import cost, params, tokens
from llavakit.train.config import LoraSettings, TrainConfig

# (name, sharded, LoRA, activation checkpointing)
MODES = (("ddp", False, False, False), ("fsdp", True, False, False), ("lora", False, True, False),
         ("ddp_checkpointing", False, False, True), ("fsdp_checkpointing", True, False, True),
         ("lora_checkpointing", False, True, True))


def _trainability(counts: dict) -> cost.Trainability:
    trained = counts["trainable"]
    return cost.Trainability(trained["vision"], trained["projector"], trained["llm"], counts["adapters"])


def _sample(recipe: ModelRecipe, config, media: dict[str, tokens.MediumTokens], train: TrainConfig,
            text_tokens: int) -> tuple[cost.Sample, str]:
    """The stage's planned sample: the largest medium the model trains on plus ``text_tokens``, at
    most the stage's max_length (what one row may hold)."""
    trained = {name: medium for name, medium in media.items()
               if name != "multi_image" or recipe.media.multi_image}
    medium, largest = max(trained.items(), key=lambda item: item[1].tokens)
    side = config.tokens_per_side
    per_crop = side * side + (1 if config.vision.cls_token == "drop" else 0)
    length = min(train.data.settings.max_length, largest.tokens + text_tokens)
    return cost.Sample(length, largest.crops, per_crop, largest.crops * side * side), medium


def plan_recipe(recipe: ModelRecipe, stage: str | None = None, gpus: int = 8, gpu_memory_gib: float = 80.0,
                text_tokens: int | None = None) -> dict[str, Any]:
    """Everything ``llavakit plan`` reports, as JSON-ready data."""
    from llavakit.recipe.plan import _check_train

    config = recipe.llava_config()
    model = params.meta_model(config)
    shape = cost.model_shape(config, model)
    media = tokens.visual_tokens(config, recipe.media.images, recipe.media.frames, recipe.media.video)
    text = recipe.media.text_tokens if text_tokens is None else text_tokens
    stages: list[DataStage] = [recipe.stage(stage)] if stage else recipe.enabled_stages()
    gpu_bytes = int(gpu_memory_gib * cost.GIB)
    result: dict[str, Any] = {
        "recipe": recipe.name, "params": params.part_counts(model),
        "tokens": {name: medium.to_json() for name, medium in media.items()},
        "trainable": {}, "frozen": {}, "sample": {}, "flops": {}, "memory": {}}
    for spec in stages:
        train = _check_train(recipe, spec)
        counts = params.stage_counts(model, train)
        lora_train = train if train.lora is not None else train.model_copy(update={"lora": LoraSettings()})
        lora_counts = counts if train.lora is not None else params.stage_counts(model, lora_train)
        sample, medium = _sample(recipe, config, media, train, text)
        result["trainable"][spec.name] = counts["trainable"]
        result["frozen"][spec.name] = counts["frozen"]
        result["sample"][spec.name] = {"tokens": sample.tokens, "crops": sample.crops, "medium": medium,
                                       "text_tokens": text, "max_length": train.data.settings.max_length,
                                       "micro_batch": train.micro_batch_size}
        result["flops"][spec.name] = cost.flops_per_sample(shape, sample, _trainability(counts))
        accumulation = max(1, train.global_batch_size // (train.micro_batch_size * gpus))
        modes = {}
        for name, sharded, lora, checkpointing in MODES:
            trained = _trainability(lora_counts if lora else counts)
            estimate = cost.memory(shape, trained, sample, train.micro_batch_size, gpus, sharded, checkpointing,
                                   accumulation=accumulation)
            modes[name] = estimate.to_json(gpu_bytes)
        result["memory"][spec.name] = {"gpus": gpus, "gpu_memory_gib": gpu_memory_gib,
                                       "accumulation_steps": accumulation, "modes": modes}
    return result


def human(number: float) -> str:
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= size:
            return f"{number / size:.2f}{unit}"
    return f"{number:g}"


def format_plan(plan: dict[str, Any]) -> str:
    """Tables for people: parameters, visual tokens, and per stage its sample, FLOPs and memory."""
    stages = list(plan["trainable"])
    lines = [f"recipe {plan['recipe']}: {human(plan['params']['total'])} parameters "
             "(built on the meta device: no weights read)", ""]
    lines.append(f"{'part':<11}{'parameters':>12}" + "".join(f"{s + ' trains':>18}" for s in stages))
    for part in ("vision", "projector", "llm", "total"):
        lines.append(f"{part:<11}{human(plan['params'][part]):>12}"
                     + "".join(f"{human(plan['trainable'][s][part]):>18}" for s in stages))
    lines += ["", f"{'visual tokens':<16}{'tokens':>8}{'crops':>7}  shape"]
    for medium, info in plan["tokens"].items():
        detail = f"{info.get('count', 1)} x " if medium != "largest_image" else ""
        size = "x".join(map(str, info.get("size", [])))
        grid = f", grid {'x'.join(map(str, info['grid']))}" if "grid" in info else ""
        lines.append(f"{medium.replace('_', ' '):<16}{info['tokens']:>8,}{info['crops']:>7}  {detail}{size}{grid}")
    for stage in stages:
        sample, flops, memory = plan["sample"][stage], plan["flops"][stage], plan["memory"][stage]
        lines += ["", f"stage {stage}: a sample of {sample['tokens']:,} tokens ({sample['medium'].replace('_', ' ')} "
                  f"+ {sample['text_tokens']} text, at most max_length {sample['max_length']:,}), "
                  f"micro-batch {sample['micro_batch']}",
                  f"  FLOPs per sample: {flops['total']:.3g} (vision {flops['vision']:.3g}, projector "
                  f"{flops['projector']:.3g}, llm {flops['llm']:.3g})",
                  f"  memory per GPU, GiB ({memory['gpus']} GPUs of {memory['gpu_memory_gib']:g} GiB, "
                  f"{memory['accumulation_steps']} micro-batches per step):",
                  f"  {'mode':<20}{'weights':>9}{'grads':>9}{'AdamW':>9}{'activ.':>9}{'total':>9}  fits"]
        for mode, row in memory["modes"].items():
            lines.append(f"  {mode:<20}" + "".join(f"{row[key]:>9.1f}" for key in (
                "weights", "gradients", "optimizer", "activations", "total")) + f"  {'yes' if row['fits'] else 'no'}")
        fitting = [mode for mode, row in memory["modes"].items() if row["fits"]]
        lines.append(f"  fits: {', '.join(fitting) if fitting else 'nothing at this micro-batch'}")
    return "\n".join(lines)
