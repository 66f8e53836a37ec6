"""What a recipe will do, worked out before it does anything: the checks, then each stage's
`llavakit train` config and data mixture. Pure: nothing is generated, trained or written here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llavakit.recipe.schema import RUNNER_KEYS, START_PARTS, START_PREVIOUS, Recipe, RecipeError, StageSpec
from llavakit.train.config import TrainConfigError, build_config, deep_merge

CONFIGS_DIR = "configs"  # under OUT: every stage's config and mixture, rerunnable with `llavakit train`


@dataclass(frozen=True)
class Parts:
    """The pretrained parts the first stage builds from (the components' output)."""

    vision_dir: Path
    llm_dir: Path
    feature_layer: int


@dataclass
class StagePlan:
    name: str
    start: str  # "parts" or the name of the stage whose model it continues
    config: dict[str, Any]  # the `llavakit train` config, written to OUT/configs/<name>.yaml
    mixture: dict[str, Any] | None  # the mixture YAML's content when the data is more than one whole dataset
    mixture_file: str | None  # its file name under OUT/configs


def mixture_file_name(stage: str) -> str:
    return f"{stage}_mixture.yaml"


def starts(recipe: Recipe) -> dict[str, str]:
    """Each enabled stage's start: ``parts`` or the earlier stage it continues."""
    result: dict[str, str] = {}
    previous: str | None = None
    for stage in recipe.enabled_stages():
        where = f"stages.{stage.name}.start"
        if stage.start == START_PREVIOUS:
            if previous is None:
                raise RecipeError(f"{where}: 'previous', but it is the first stage to run; give 'parts'")
            result[stage.name] = previous
        elif stage.start == START_PARTS or stage.start in result:
            result[stage.name] = stage.start
        else:
            known = ", ".join([START_PARTS, START_PREVIOUS, *result])
            raise RecipeError(f"{where}: {stage.start!r} is not an earlier stage that runs; choose from {known}")
        previous = stage.name
    return result


def check(recipe: Recipe) -> None:
    """Refuse, before anything runs, what would only fail (or silently do nothing) later."""
    from llavakit.config import VisualConfig
    from llavakit.synth import EVAL_TASK_NAMES
    from llavakit.synth.datasets import IMAGE_EVAL_TASKS

    try:
        world = recipe.world_settings()
        recipe.component_settings()
    except ValueError as err:
        raise RecipeError(f"world/components: {err}") from None
    for where, visual in (("model.visual", recipe.model.visual),
                          ("evaluation.visual", {**recipe.model.visual, **recipe.evaluation.visual})):
        try:
            VisualConfig.model_validate(visual)
        except ValidationError as err:
            raise RecipeError("; ".join(f"{'.'.join([where, *map(str, e['loc'])])}: {e['msg']}"
                                        for e in err.errors())) from None
    names = [stage.name for stage in recipe.stages]
    if dupes := sorted({name for name in names if names.count(name) > 1}):
        raise RecipeError(f"stages: the names {', '.join(dupes)} are used more than once")
    if not recipe.enabled_stages():
        raise RecipeError("stages: every stage is disabled; nothing would train")
    starts(recipe)
    for stage in recipe.enabled_stages():
        config = _check_train(recipe, stage)
        samples = _check_mixture(stage, world)
        if samples < config.global_batch_size:
            raise RecipeError(f"stages.{stage.name}.mixture: {samples} samples cannot fill one global batch of "
                              f"{config.global_batch_size} (stages.{stage.name}.train.global_batch_size)")
    for key in ("tasks", "controls"):
        for task in getattr(recipe.evaluation, key):
            if task not in EVAL_TASK_NAMES:
                raise RecipeError(f"evaluation.{key}: unknown task {task!r}; the world's tasks: "
                                  f"{', '.join(EVAL_TASK_NAMES)}")
    for task in recipe.evaluation.controls:
        if task not in IMAGE_EVAL_TASKS:
            raise RecipeError(f"evaluation.controls: {task!r} shows no image to swap; image tasks: "
                              f"{', '.join(IMAGE_EVAL_TASKS)}")


def _check_train(recipe: Recipe, stage: StageSpec):
    """The stage's TrainConfig as far as it is known before the run (placeholder paths)."""
    from llavakit.train.params import typically_trained

    where = f"stages.{stage.name}.train"
    for key in RUNNER_KEYS:
        if key in stage.train or key in recipe.stage_defaults:
            raise RecipeError(f"{where}.{key}: set by the runner (the stage's start, OUT/<stage>, the recipe's seed)")
    if any(isinstance(data, dict) and "sources" in data
           for data in (stage.train.get("data"), recipe.stage_defaults.get("data"))):
        raise RecipeError(f"{where}.data.sources: a stage's data is its mixture (stages.{stage.name}.mixture)")
    fragment = deep_merge(recipe.stage_defaults, stage.train)
    for field, rule in stage.scale.items():
        if rule is not None and not isinstance(fragment.get(field), (int, float)):
            raise RecipeError(f"stages.{stage.name}.scale.{field}: the stage sets no {field} to scale")
    data = deep_merge(fragment, {"model": {"checkpoint": "checked"}, "output_dir": "checked",
                                 "data": {"sources": [{"path": "checked.jsonl"}]}})
    data.setdefault("stage", None)
    try:
        config = build_config(data, where)
    except TrainConfigError as err:
        invalid = err.__context__  # build_config's pydantic error, for one line naming each key
        if not isinstance(invalid, ValidationError):
            raise RecipeError(str(err)) from None
        raise RecipeError("; ".join(f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                    for e in invalid.errors())) from None
    if config.lora is None and not typically_trained(config.trainable):
        raise RecipeError(f"{where}.trainable: every module is frozen; the stage would train nothing")
    return config


def _check_mixture(stage: StageSpec, world) -> int:
    """The number of samples the stage's mixture selects from a world with these settings."""
    from llavakit.data.mixture import parse_strategy
    from llavakit.synth.datasets import dataset_sizes, missing_reason

    sizes = dataset_sizes(world)
    total = 0
    for item in stage.mixture:
        if item.dataset not in sizes:
            raise RecipeError(f"stages.{stage.name}.mixture: {missing_reason(item.dataset, world)}")
        available = sizes[item.dataset]
        selected = parse_strategy(item.take).size(available)
        if selected > available:
            raise RecipeError(f"stages.{stage.name}.mixture: dataset {item.dataset!r} take {item.take!r} asks for "
                              f"{selected} samples; the world has {available}")
        total += selected
    if total == 0:
        datasets = ", ".join(f"{item.dataset} ({item.take})" for item in stage.mixture) or "no dataset"
        raise RecipeError(f"stages.{stage.name}.mixture: resolves to zero samples ({datasets})")
    return total


def scaled(value: float, field: str, rule, scale: float) -> float | int:
    """``value * scale ** power`` (truncated for a step count), never below ``min``."""
    result = value * scale ** rule.power
    if field == "max_steps":
        result = int(result)
    if rule.min is not None:
        result = max(rule.min, result)
    return int(result) if field == "max_steps" else float(result)


def _folders(dataset, world: Path) -> dict[str, str]:
    """The folder keys a dataset's media need (both live in the world directory)."""
    folders = {}
    if dataset.images:
        folders["image_folder"] = str(world)
    if dataset.videos:
        folders["video_folder"] = str(world)
    return folders


def stage_data(recipe: Recipe, stage: StageSpec, world: Path, configs_dir: Path) -> tuple[list[dict], dict | None]:
    """The stage's ``data.sources`` and, when it mixes datasets or takes part of one, its mixture."""
    from llavakit.synth.datasets import DATASETS

    items = [(DATASETS[item.dataset], item.take) for item in stage.mixture]
    if len(items) == 1 and items[0][1] == "all":  # one whole file: read directly, no mixture
        dataset = items[0][0]
        return [{"path": str(world / dataset.file), **_folders(dataset, world)}], None
    mixture = {"seed": recipe.seed, "datasets": [
        {"json_path": str(world / dataset.file), **_folders(dataset, world),
         **({} if take == "all" else {"sampling_strategy": take})}
        for dataset, take in items]}
    return [{"path": str(configs_dir / mixture_file_name(stage.name))}], mixture


def plan_stages(recipe: Recipe, out: Path, world: Path, parts: Parts) -> list[StagePlan]:
    """Every enabled stage's train config (paths absolute: OUT/<stage>, the world's files)."""
    configs_dir = out / CONFIGS_DIR
    plans = []
    for stage in recipe.enabled_stages():
        start = starts(recipe)[stage.name]
        config = deep_merge(recipe.stage_defaults, stage.train)
        for field, rule in stage.scale.items():
            if rule is not None:
                config[field] = scaled(config[field], field, rule, recipe.scale)
        if start == START_PARTS:
            model = {"build": {"vision": {"pretrained": str(parts.vision_dir), "feature_layer": parts.feature_layer},
                               "llm": {"pretrained": str(parts.llm_dir)}, "visual": dict(recipe.model.visual)}}
        else:
            model = {"checkpoint": str(out / start / "model")}
        sources, mixture = stage_data(recipe, stage, world, configs_dir)
        config |= {"seed": recipe.seed, "model": model, "output_dir": str(out / stage.name),
                   "data": {"sources": sources, **config.get("data", {})}}
        # Written in a reading order: the seed and shared settings, what the stage is and starts
        # from, its data and where it writes, then the stage's own settings.
        head = ["seed", *recipe.stage_defaults, "stage", "model", "data", "output_dir"]
        config = {key: config[key] for key in head if key in config} | {
            key: value for key, value in config.items() if key not in head}
        plans.append(StagePlan(stage.name, start, config, mixture,
                               mixture_file_name(stage.name) if mixture is not None else None))
    return plans


def eval_task_names(recipe: Recipe) -> list[str]:
    """The evaluation runner's names of the recipe's tasks (the world's task YAMLs)."""
    return [f"synth_{task}" for task in recipe.evaluation.tasks]
