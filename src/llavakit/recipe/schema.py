"""The recipe file: one YAML that says everything a run does, checked before anything runs.

    name: quickstart
    seed: 0
    scale: 1.0                  # world sizes, component steps and each stage's `scale` rules
    world: {motion_drill: 2000}  # synth.WorldSettings fields (seed, scale: the recipe's); dir: OUT/world
    components: {vision: {position_weight: 4.0}, language: {}}  # quickstart.settings; cache: OUT/cache
    model: {visual: {...}}      # the LLaVA model's visual representation (config.VisualConfig)
    stage_defaults: {...}       # a TrainConfig fragment under every stage's own
    stages:
      - name: grounding
        start: previous         # parts, previous, or an earlier stage's name
        mixture:                # the world's datasets by name (synth.datasets), each with a share
          - {dataset: grounding}
          - {dataset: listing, take: "first:50%"}
        train: {stage: stage1.5, epochs: 4, stop_at_loss: {below: 0.15, window: 20}, ...}
        scale: {epochs: {power: 0.5, min: 6.0}}  # value * scale ** power, never below min
    evaluation:                 # choices are made on dev; test (and test_paraphrase) is only reported
      splits: [dev, test, test_paraphrase]
      tasks: [color, ...]
      controls: [color, ...]    # every image swapped for another sample's (test; dev if test is not scored)
      limit: null               # at most this many samples per task and split
      batch_size: 32

Unknown keys are refused, as ``TrainConfig`` refuses them. ``check`` refuses, naming the key or
dataset, what would only fail later: a stage whose rules freeze every module, a dataset the world
does not have, a mixture that selects no sample, a start that is not an earlier stage.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from llavakit.errors import LlavakitError
from llavakit.quickstart.settings import ComponentSettings, LanguageSettings, VisionSettings
from llavakit.synth.settings import WorldSettings
from llavakit.utils import DESCRIPTION


class RecipeError(LlavakitError):
    """A recipe that cannot run, found before anything runs."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _section(cls: type, name: str, skip: tuple[str, ...] = (), **extra: Any) -> type[BaseModel]:
    """A strict pydantic model of a settings dataclass's fields (less ``skip``, plus ``extra``)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (hints[f.name], Field(f.default, description=f.metadata.get(DESCRIPTION)))
              for f in dataclasses.fields(cls) if f.name not in skip and f.default is not dataclasses.MISSING}
    return create_model(name, __base__=_Strict, **fields, **extra)


# seed and scale are the recipe's own, the same for the world, the components and the stages
WorldSection = _section(WorldSettings, "WorldSection", skip=("seed", "scale"),
                        dir=(str | None, Field(None, description="the world's folder (null: OUT/world); a world "
                                                                 "already there with the same settings is reused")))
VisionSection = _section(VisionSettings, "VisionSection")
LanguageSection = _section(LanguageSettings, "LanguageSection")


class ComponentsSection(_Strict):
    cache: str | None = Field(None, description="the trained components' cache folder (null: OUT/cache), keyed "
                                                "by their settings and world")
    vision: VisionSection = Field(  # type: ignore[valid-type]
        VisionSection(), description="the SigLIP-style vision tower and its contrastive training (quickstart.settings)")
    language: LanguageSection = Field(  # type: ignore[valid-type]
        LanguageSection(), description="the BPE tokenizer and the Qwen2 LM (quickstart.settings)")
    device: str | None = Field(None, description="where the components train (null: CUDA when available); not "
                                                 "part of the cache key")
    threads: int | None = Field(None, description="torch threads while the components train (null: torch's "
                                                  "default); not part of the cache key")


class ModelSection(_Strict):
    visual: dict[str, Any] = Field({}, description="config.VisualConfig data (checked by `check`), passed as "
                                                   "written to the first stage's build")


class MixtureItem(_Strict):
    dataset: str = Field(description="a dataset of the world by name (synth.datasets.DATASETS)")
    take: str = Field("all", description="a mixture sampling strategy: all, first:N, end:N, random:N (N a "
                                         "count or K%)")

    @field_validator("take")
    @classmethod
    def _strategy(cls, value: str) -> str:
        from llavakit.data.mixture import parse_strategy

        parse_strategy(value)
        return value


class ScaleRule(_Strict):
    """The stage's value times ``scale ** power``, never below ``min``."""

    power: float = Field(1.0, description="the exponent of the recipe's scale")
    min: float | None = Field(None, description="the least value after scaling (null: no floor)")


STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
START_PARTS, START_PREVIOUS = "parts", "previous"
# Set by the runner from the rest of the recipe, never by a stage's train fragment.
RUNNER_KEYS = ("model", "output_dir", "seed")


class StageBase(_Strict):
    """What every recipe's stage has, whatever its data: a name, a start and a TrainConfig fragment
    (the synthetic-world stages here, the hub-parts stages of ``model_recipe``)."""

    name: str = Field(description="the stage's name: letters, digits, '_', '.', '-' (it names the stage's "
                                  "folder and its `--set stages.NAME...` path)")
    enabled: bool = Field(True, description="false: the stage does not run (a later stage's `previous` is then "
                                                "the last stage before it that runs)")
    start: str = Field(START_PREVIOUS, description="what the stage starts from: parts (pretrained parts, a new "
                                                   "projector), previous (the stage before it that runs), or an "
                                                   "earlier stage's name")
    train: dict[str, Any] = Field({}, description="a TrainConfig fragment (see the training config above), "
                                                  "over stage_defaults")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not STAGE_NAME.match(value) or value in (START_PARTS, START_PREVIOUS):
            raise ValueError(f"stage name {value!r}: letters, digits, '_', '.', '-' (it names a folder), "
                             f"not {START_PARTS!r} or {START_PREVIOUS!r}")
        return value


class StageSpec(StageBase):
    mixture: list[MixtureItem] = Field(description="the world's datasets the stage trains on, each with its "
                                                   "share (`take`)")
    scale: dict[Literal["epochs", "max_steps"], ScaleRule | None] = Field(
        {}, description="how the recipe's scale changes the stage's epochs or max_steps: {power, min} gives "
                        "value * scale ** power, never below min (power 1.0, min null by default)")


EvalSplit = Literal["dev", "test", "test_paraphrase"]  # the world's held-out splits (synth.world.EVAL_SPLITS)


class EvaluationSection(_Strict):
    splits: list[EvalSplit] = Field(["dev", "test", "test_paraphrase"], min_length=1,
                                    description="the world's held-out splits to score, each once: dev (new "
                                                "scenes; what a recipe's choices are made on), test (reported, "
                                                "never chosen on), test_paraphrase (the test scenes asked in "
                                                "held-out wording)")
    tasks: list[str] = Field(min_length=1, description="the world's eval task names (synth.EVAL_TASK_NAMES)")
    controls: list[str] = Field([], description="tasks asked again with every image swapped for another "
                                                "sample's (on test; on dev if test is not scored)")
    limit: int | None = Field(None, ge=1, description="at most this many samples per task and split (null: all)")
    batch_size: int = Field(32, ge=1, description="samples per generation batch")
    visual: dict[str, Any] = Field({}, description="config.VisualConfig fields changed for evaluation only, over "
                                                   "what the model trained with (video_frames: 16 asks about more "
                                                   "frames than training sampled); the controls use them too")

    @field_validator("splits")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"a split is listed twice: {', '.join(value)}")
        return value


class Recipe(_Strict):
    name: str = Field(description="the recipe's name (reports show it)")
    description: str = Field("", description="what the recipe is for, in a sentence or two")
    seed: int = Field(0, description="the seed of the world, the components and every stage")
    scale: float = Field(1.0, gt=0, description="multiplies the world's sample counts, the components' steps and "
                                                "each stage's epochs or max_steps under its `scale` rules")
    world: WorldSection = Field(  # type: ignore[valid-type]
        WorldSection(), description="the synthetic world's settings (synth.WorldSettings; seed and scale are the "
                                    "recipe's)")
    components: ComponentsSection = Field(ComponentsSection(), description="the tiny vision tower and LM trained "
                                                                           "before the stages")
    model: ModelSection = Field(ModelSection(), description="the LLaVA model's settings beyond its components")
    stage_defaults: dict[str, Any] = Field({}, description="a TrainConfig fragment under every stage's own `train`")
    stages: list[StageSpec] = Field(min_length=1, description="the training stages, run in order")
    evaluation: EvaluationSection = Field(description="what is scored once the last stage has trained")

    def enabled_stages(self) -> list[StageSpec]:
        return [stage for stage in self.stages if stage.enabled]

    def world_settings(self) -> WorldSettings:
        values = self.world.model_dump(exclude={"dir"})  # type: ignore[attr-defined]
        return WorldSettings(seed=self.seed, scale=self.scale, **values)

    def component_settings(self) -> ComponentSettings:
        return ComponentSettings(vision=VisionSettings(**self.components.vision.model_dump()),  # type: ignore[attr-defined]
                                 language=LanguageSettings(**self.components.language.model_dump()),  # type: ignore[attr-defined]
                                 seed=self.seed, scale=self.scale, device=self.components.device,
                                 threads=self.components.threads)


def validate_recipe(data: Any, source: str) -> Recipe:
    """The typed recipe, or a RecipeError naming each bad key (stages by name, not position)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of keys, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        problems = [f"{_location(data, error['loc'])}: {error['msg']}" for error in err.errors()]
        raise RecipeError(f"{source}: invalid recipe: " + "; ".join(problems)) from None


def _location(data: Any, loc: tuple) -> str:
    """``("stages", 3, "train")`` -> ``stages.grounding.train``: the path ``--set`` takes."""
    parts, node = [], data
    for key in loc:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            item = node[key]
            parts.append(str(item["name"]) if isinstance(item, dict) and "name" in item else str(key))
            node = item
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)
