"""An ablation file and its plan: a base recipe, named arms (each a set of ``--set`` overrides),
a number of seeds, the tasks compared and the baseline arm. ``llavakit lab`` runs the plan
(``recipe.lab``); this module only reads the file and says what each run is.

    title: AnyRes against a single 1x1 crop
    claim: AnyRes beats a single crop on high-resolution detail (seeds 000, 003)
    recipe: ../lab-tiny.yaml          # relative to this file, or a shipped recipe's name
    seeds: 3                          # seed k = the recipe's `seed` set to k, k = 0..seeds-1
    baseline: anyres                  # the arm every other is compared with (default: the first)
    tasks: [hires_detail]             # the tasks the ablation is about: they lead the table
                                      # (multiview/front: one category of a task's score)
    section: eval_dev                 # the results.json section compared
    overrides: {evaluation.limit: 50} # for every arm, before the arm's own
    arms:
      anyres: {}
      single_crop: {model.visual.image_mode: squash, model.visual.image_newline: image}
    pairs: []                         # further [a, b] pairs compared as a - b
    arm_recipes: {}                   # {arm: recipe}: an arm trained from another base recipe

Every run is loaded and checked (``load_recipe``) when the plan is made, before any runs.
Runs share what they can: one world folder per distinct world (``OUT/worlds/<key>``: the world's
settings decide its files, so two arms with the same seed and world read one copy) and one
component cache (``OUT/cache``, keyed by the components' settings and world).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llavakit.recipe.load import find_recipe, load_recipe, read_yaml
from llavakit.recipe.overrides import as_set_flags
from llavakit.recipe.schema import Recipe, RecipeError

WORLDS_DIR, CACHE_DIR = "worlds", "cache"  # under the lab's OUT, shared by every run
RESULTS_FILE = "results.json"  # a run is finished when its folder holds this
REUSED_FILE = "reused_from.txt"  # in a run copied from another lab (`--reuse`): the folder it came from


class Ablation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(description="what the ablation compares (the report's title)")
    claim: str = Field("", description="the seed paper's finding this ablation tests, with the seed it comes from")
    # An ablation with a status still loads and plans, so it is checked like the others.
    status: str | None = Field(None, description="why the ablation cannot test its claim yet (a knob or data "
                                                 "the project lacks); null: it can")
    recipe: str = Field(description="the base recipe: a path relative to this file, or a shipped recipe's name")
    seeds: int = Field(1, ge=1, description="runs per arm: seed k sets the recipe's `seed` to k, k = 0..seeds-1")
    baseline: str | None = Field(None, description="the arm every other is compared with (null: the first arm)")
    tasks: list[str] = Field([], description="the tasks the ablation is about; they lead the table (empty: "
                                             "every task the recipe evaluates). TASK/CATEGORY names one part of "
                                             "a task that breaks its score down: multiview/front, the "
                                             "multi-image tasks' samples in one placement")
    # dev by default: the lab is where a recipe's choices are made, and test is only reported.
    section: str = Field("eval_dev", description="the results.json section compared: eval_dev (dev), eval "
                                                 "(test) or eval_paraphrase (test_paraphrase)")
    overrides: dict[str, Any] = Field({}, description="--set overrides of the recipe for every arm, before the "
                                                      "arm's own")
    arms: dict[str, dict[str, Any]] = Field(min_length=1, description="the arms by name (each names a folder), "
                                                                      "each a mapping of --set overrides")
    # A claim can be about two arms neither of which is the baseline (the larger LM against the
    # larger tower): the pair is compared as an arm is with the baseline, paired by seed.
    pairs: list[tuple[str, str]] = Field([], description="further pairs of arms [a, b] compared as a - b, paired "
                                                         "by seed (each arm is compared with the baseline already)")

    # Overrides change a recipe's values but cannot add stages: two stage structures are two
    # base recipes, compared on one world per seed when their world settings agree.
    arm_recipes: dict[str, str] = Field({}, description="arms trained from another base recipe than `recipe` "
                                                        "(a path relative to this file, or a shipped recipe's "
                                                        "name), for arms whose stages differ")

    @model_validator(mode="after")
    def _baseline(self) -> Ablation:
        if self.baseline is None:
            self.baseline = next(iter(self.arms))
        if self.baseline not in self.arms:
            raise ValueError(f"baseline {self.baseline!r} is not an arm (arms: {', '.join(self.arms)})")
        for name in self.arms:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"arm name {name!r}: it names a folder")
        for pair in self.pairs:
            if unknown := [arm for arm in pair if arm not in self.arms]:
                raise ValueError(f"pair {list(pair)}: {', '.join(map(repr, unknown))} is not an arm "
                                 f"(arms: {', '.join(self.arms)})")
            if pair[0] == pair[1]:
                raise ValueError(f"pair {list(pair)}: an arm compared with itself")
        if unknown := [arm for arm in self.arm_recipes if arm not in self.arms]:
            raise ValueError(f"arm_recipes: {', '.join(map(repr, unknown))} is not an arm (arms: {', '.join(self.arms)})")
        return self


@dataclass
class Run:
    """One arm at one seed: its folder and the ``--set`` flags ``llavakit recipe run`` gets."""

    arm: str
    seed: int
    dir: Path
    flags: list[str]
    recipe: Recipe = field(repr=False)
    recipe_path: Path  # the arm's base recipe file

    @property
    def name(self) -> str:
        return f"{self.arm}/seed-{self.seed}"

    @property
    def finished(self) -> bool:
        return (self.dir / RESULTS_FILE).is_file()

    @property
    def reused_from(self) -> str | None:
        path = self.dir / REUSED_FILE
        return path.read_text(encoding="utf-8").strip() if path.is_file() else None

    @property
    def identity(self) -> str:
        """What makes two runs the same run, whichever lab made them (`run_identity`)."""
        return run_identity(self.recipe.model_dump(mode="json"))


# Where a lab keeps its shared inputs: a run made in another lab's folders is still the same run.
SHARED_PATHS = (("world", "dir"), ("components", "cache"))


def run_identity(recipe: dict[str, Any]) -> str:
    """The recipe as it ran (results.json's ``recipe``) without what does not change a run: the
    shared folders' paths, the description and the stages that were disabled (a baseline arm that
    disables a new stage is the run made before the stage existed). Its visual settings are
    completed with their defaults (an ablation arm often writes a default out). Elsewhere a value
    written out equal to its default makes another run: a run is run again rather than taken for
    one it is not."""
    from llavakit.config import VisualConfig

    data = json.loads(json.dumps(recipe))
    for section, key in SHARED_PATHS:
        data.get(section, {}).pop(key, None)
    data.pop("description", None)
    data["stages"] = [stage for stage in data.get("stages", []) if stage.get("enabled", True)]
    model = data.get("model", {})
    model["visual"] = VisualConfig.model_validate(model.get("visual", {})).model_dump(mode="json")
    return json.dumps(data, sort_keys=True)


@dataclass
class LabPlan:
    ablation: Ablation
    source: Path  # the ablation file
    recipe_path: Path
    out: Path
    seeds: list[int]
    runs: list[Run]

    def arm_recipe(self, arm: str) -> Path:
        """The base recipe file of an arm's runs."""
        return next(run.recipe_path for run in self.runs if run.arm == arm)

    def tasks(self) -> list[str]:
        """The compared tasks first, then the recipe's other evaluation tasks."""
        every = self.runs[0].recipe.evaluation.tasks
        return list(self.ablation.tasks) + [t for t in every if t not in self.ablation.tasks]


def load_ablation(path: str | Path) -> tuple[Ablation, Path, Path]:
    """The ablation, its file and the path of its recipe."""
    path = find_recipe(path)
    data = read_yaml(path)
    try:
        ablation = Ablation.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'ablation'}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"{path}: invalid ablation: {problems}") from None
    return ablation, path, _recipe_file(path, ablation.recipe)


def _recipe_file(ablation_file: Path, name: str) -> Path:
    """A recipe named by an ablation: a path relative to the ablation's file, or a shipped recipe."""
    local = ablation_file.parent / name
    return (local if local.is_file() else find_recipe(name)).resolve()


def world_key(recipe: Recipe) -> str:
    """A short name for the world's settings: equal settings, equal files, one folder."""
    text = json.dumps(recipe.world_settings().to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def plan_lab(path: str | Path, out: str | Path, overrides: list[str] = (), seeds: int | None = None) -> LabPlan:
    """Every arm x seed as a checked recipe with its folder, or a RecipeError naming the arm.

    The flags of a run, in order: the ablation's common ``overrides``, the caller's (``--set``),
    the arm's own, the seed, then the shared world folder and component cache.
    """
    ablation, source, recipe_path = load_ablation(path)
    out = Path(out).resolve()
    seed_list = list(range(seeds if seeds is not None else ablation.seeds))
    if not seed_list:
        raise RecipeError("--seeds: at least one seed")
    runs = []
    for arm, arm_overrides in ablation.arms.items():
        try:
            arm_recipe = (_recipe_file(source, ablation.arm_recipes[arm]) if arm in ablation.arm_recipes
                          else recipe_path)
        except RecipeError as err:
            raise RecipeError(f"{source}: arm_recipes.{arm}: {err}") from None
        for seed in seed_list:
            flags = (as_set_flags(ablation.overrides) + list(overrides) + as_set_flags(arm_overrides)
                     + [f"seed={seed}"])
            try:
                recipe = load_recipe(arm_recipe, flags)  # the world's key needs the arm's settings
                flags += [f"world.dir={out / WORLDS_DIR / world_key(recipe)}", f"components.cache={out / CACHE_DIR}"]
                recipe = load_recipe(arm_recipe, flags)
            except RecipeError as err:
                raise RecipeError(f"{source}: arm {arm!r}, seed {seed}: {err}") from None
            runs.append(Run(arm, seed, out / arm / f"seed-{seed}", flags, recipe, arm_recipe))
    plan = LabPlan(ablation, source, recipe_path, out, seed_list, runs)
    evaluated = set(runs[0].recipe.evaluation.tasks)
    for run in runs:
        if set(run.recipe.evaluation.tasks) != evaluated:
            raise RecipeError(f"{source}: arm {run.arm!r} evaluates other tasks than arm {runs[0].arm!r}; "
                              "arms are compared task by task")
    unknown = [t for t in ablation.tasks if t.partition("/")[0] not in evaluated]
    if unknown:
        raise RecipeError(f"{source}: tasks {unknown}: not evaluated by the recipe "
                          f"(it evaluates: {', '.join(sorted(evaluated))})")
    return plan
