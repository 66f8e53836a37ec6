"""Recipes of real models: parts named by hub id, their architectures written in the file, the
stages' data given by the user.

    name: llava-next-7b
    model:                      # LlavaConfig data (config.py); both parts carry `pretrained` AND `hf_config`
      family: llava_next
      vision: {pretrained: openai/clip-vit-large-patch14-336, feature_layer: -2, hf_config: {...}}
      projector: {type: mlp2x_gelu}
      llm: {pretrained: lmsys/vicuna-7b-v1.5, hf_config: {...}}
      visual: {crop_size: 336, image_mode: anyres, grid_pinpoints: [[672, 672], ...], max_grids: null}
    media: {images: 12}         # the multi-image sample `llavakit plan` sizes
    stage_defaults: {...}       # a TrainConfig fragment under every stage's own
    stages:
      - name: stage1
        start: parts            # the pretrained parts and a new projector
        data: null              # the user's: --set stages.stage1.data=/data/blip_558k.json
        train: {stage: stage1, global_batch_size: 256, ...}

The architectures make a recipe plannable without the hub (``llavakit plan`` builds the model on
the meta device); the stages share the synthetic-world recipes' stage fields, starts and checks
(``schema.StageBase``, ``plan.starts``, ``plan._check_train``). A stage's ``data`` is a path, a
``DataSource`` mapping (path, image_folder, video_folder) or a list of them; it may stay empty
until the stage's train config is asked for (``train_configs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from llavakit.config import LlavaConfig, validate
from llavakit.recipe.plan import _check_train, starts
from llavakit.recipe.schema import START_PARTS, RecipeError, StageBase, _location, _Strict
from llavakit.train.config import DataSource, deep_merge

MODEL_KEY = "vision"  # a recipe whose `model` names its parts (the synthetic-world ones have only `visual`)


class DataStage(StageBase):
    """A stage over the user's data files (None until given)."""

    data: list[DataSource] | None = Field(None, description="the stage's data: a path, a DataSource mapping or a "
                                                        "list of them (null until given, e.g. with --set "
                                                        "stages.NAME.data=PATH)")

    @field_validator("data", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"path": value}]
        if isinstance(value, dict):
            return [value]
        return value

    @property
    def scale(self) -> dict:
        """No scale rules: the stages of a real model run as published (``plan._check_train`` asks)."""
        return {}


class MediaSection(_Strict):
    """The samples ``llavakit plan`` counts visual tokens of, beside the largest single image."""

    images: int = Field(2, ge=1, description="images in the multi-image sample")
    multi_image: bool = Field(True, description="whether the model trains on multi-image prompts (the planned "
                                                "sample is the largest medium the model trains on)")
    video: bool = Field(True, description="whether the model takes video (LLaVA-1.5 and NeXT-Image do not)")
    frames: int | None = Field(None, ge=1, description="video frames (None: the model's visual.video_frames)")
    text_tokens: int = Field(256, ge=0, description="text tokens of the planned sample, beside its largest medium")


class ModelRecipe(_Strict):
    name: str = Field(description="the recipe's name")
    description: str = Field("", description="what the recipe builds, in a sentence or two")
    seed: int = Field(0, description="the seed of every stage")
    model: dict[str, Any] = Field(description="LlavaConfig data (see the model config above); vision and llm "
                                              "each carry `pretrained` (the hub id) and `hf_config` (its "
                                              "architecture, so planning needs no download)")
    media: MediaSection = Field(MediaSection(), description="the samples `llavakit plan` counts visual tokens of")
    stage_defaults: dict[str, Any] = Field({}, description="a TrainConfig fragment under every stage's own `train`")
    stages: list[DataStage] = Field(min_length=1, description="the training stages, run in order")

    def enabled_stages(self) -> list[DataStage]:
        return [stage for stage in self.stages if stage.enabled]

    def llava_config(self) -> LlavaConfig:
        return validate(self.model, "model")

    def stage(self, name: str) -> DataStage:
        for stage in self.enabled_stages():
            if stage.name == name:
                return stage
        raise RecipeError(f"stage {name!r}: not a stage that runs; the stages: "
                          f"{', '.join(s.name for s in self.enabled_stages())}")


def is_model_recipe(data: Any) -> bool:
    """Whether recipe data names its parts (a real model) rather than a synthetic world's components."""
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and MODEL_KEY in data["model"]


def validate_model_recipe(data: Any, source: str) -> ModelRecipe:
    if not is_model_recipe(data):
        raise RecipeError(f"{source}: not a recipe of a real model (it needs model.vision and model.llm, the parts "
                          "by hub id with their architectures); synthetic-world recipes run with `llavakit recipe`")
    try:
        recipe = ModelRecipe.model_validate(data)
    except ValidationError as err:
        problems = [f"{_location(data, error['loc'])}: {error['msg']}" for error in err.errors()]
        raise RecipeError(f"{source}: invalid recipe: " + "; ".join(problems)) from None
    check_model_recipe(recipe, source)
    return recipe


def check_model_recipe(recipe: ModelRecipe, source: str) -> None:
    """Refuse, naming the key, what planning or a stage would only find later."""
    try:
        config = LlavaConfig.model_validate(recipe.model)
    except ValidationError as err:
        raise RecipeError(f"{source}: " + "; ".join(f"{'.'.join(['model', *map(str, e['loc'])])}: {e['msg']}"
                                                    for e in err.errors())) from None
    for part, spec in (("vision", config.vision), ("llm", config.llm)):
        if spec.pretrained is None or spec.hf_config is None:
            raise RecipeError(f"{source}: model.{part} needs both pretrained (the hub id the stage-1 build loads) "
                              "and hf_config (its architecture, so planning needs no download)")
    names = [stage.name for stage in recipe.stages]
    if dupes := sorted({name for name in names if names.count(name) > 1}):
        raise RecipeError(f"{source}: stages: the names {', '.join(dupes)} are used more than once")
    if not recipe.enabled_stages():
        raise RecipeError(f"{source}: stages: every stage is disabled; nothing would train")
    starts(recipe)
    for stage in recipe.enabled_stages():
        _check_train(recipe, stage)


def stage_train_data(recipe: ModelRecipe, stage: DataStage) -> dict[str, Any]:
    """The stage's TrainConfig data, less what the runner sets (model, output_dir, data.sources)."""
    return deep_merge(recipe.stage_defaults, stage.train)


def train_configs(recipe: ModelRecipe, out: str | Path) -> dict[str, dict[str, Any]]:
    """Each enabled stage's `llavakit train` config: the first builds from the hub parts, each later
    one continues from its start's ``OUT/<start>/model``; the data are the user's (``--set
    stages.NAME.data=PATH``), refused by name when missing."""
    out = Path(out)
    configs = {}
    for stage in recipe.enabled_stages():
        if not stage.data:
            raise RecipeError(f"stages.{stage.name}.data: no data; give yours with "
                              f"--set stages.{stage.name}.data=PATH (a LLaVA JSON/JSONL file or a mixture YAML)")
        start = starts(recipe)[stage.name]
        if start == START_PARTS:
            model = {"build": dict(recipe.model)}
        else:
            model = {"checkpoint": str(out / start / "model")}
        config = stage_train_data(recipe, stage)
        config |= {"seed": recipe.seed, "model": model, "output_dir": str(out / stage.name),
                   "data": {**config.get("data", {}),
                            "sources": [source.model_dump(exclude_none=True) for source in stage.data]}}
        configs[stage.name] = config
    return configs


def load_model_recipe(path: str | Path, overrides=()) -> ModelRecipe:
    """Read (a path or a shipped recipe's name), override and check a real model's recipe."""
    from llavakit.recipe.load import find_recipe, read_yaml
    from llavakit.recipe.overrides import apply_overrides

    path = find_recipe(path)
    data = read_yaml(path)
    if isinstance(data, dict):
        data = apply_overrides(data, overrides)
    return validate_model_recipe(data, str(path))
