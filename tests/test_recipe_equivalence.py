"""The shipped quickstart recipe plans exactly what the Python recipe it replaced did.

``fixtures/recipe/quickstart_expected.json`` was written by ``fixtures/recipe/freeze_quickstart.py``
from ``quickstart/run.py: stage_configs`` at 13881e9, for ten sets of that command's flags. For
each, the same change is given here as ``--set`` overrides of ``recipes/quickstart.yaml`` (the
AnyRes arm taken from the shipped ablation file), and everything the old ``run()`` set up before
training must come out identical: the world's and components' settings, the stage order, every
stage's training config file (its text) and that config as ``llavakit train`` resolves it, every
mixture YAML's text, the evaluation. Paths are compared as placeholders ($OUT, $WORLD, $CACHE, $VISION, $LLM). Nothing is
generated or trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from llavakit.quickstart import run as quickstart_cli
from llavakit.recipe import load_recipe
from llavakit.recipe.ablation import load_ablation, plan_lab
from llavakit.recipe.overrides import as_set_flags
from llavakit.recipe.plan import Parts, eval_task_names, plan_stages
from llavakit.train.config import build_config

FIXTURE = Path(__file__).parent / "fixtures" / "recipe" / "quickstart_expected.json"
EXPECTED = json.loads(FIXTURE.read_text())
OUT, WORLD, CACHE = Path("/frozen/out"), Path("/frozen/world"), Path("/frozen/cache")
VISION, LLM = CACHE / "vision" / "key", CACHE / "llm" / "key"
FEATURE_LAYER = -1

NO_MOTION = ["world.motion_drill=0", "stages.motion.enabled=false"]
# The frozen lengths (the shipped recipe's own; the structure lab ran about half of them, as
# overrides in recipes/ablations/quickstart-structure.yaml).
FROZEN_LENGTHS = ["world.motion_drill=2000", "stages.stage1_5.train.epochs=3", "stages.listing.train.epochs=3",
                  "stages.grounding.train.epochs=4", "stages.side_listing.train.epochs=4",
                  "stages.relation.train.epochs=2", "stages.motion.train.epochs=2", "stages.stage2.train.epochs=6.0",
                  "stages.stage2.scale.epochs.min=6.0"]
SINGLE_CROP = as_set_flags(load_ablation("ablations/anyres")[0].arms["single_crop"])
# The old flags' cases, as overrides of the recipe.
OVERRIDES = {
    "default": [],
    "no_motion": NO_MOTION,
    "single_crop": SINGLE_CROP,
    "single_crop_no_motion": SINGLE_CROP + NO_MOTION,
    "small_seed3": ["scale=0.5", "seed=3"],
    "tiny_scale": ["scale=0.1"],
    "large": ["scale=2"],
    # --stage2-epochs was the epoch count as given (a float), not scaled
    "large_stage2_epochs": ["scale=4", "seed=1", "stages.stage2.train.epochs=8.0", "stages.stage2.scale.epochs=null"],
    "few_stage2_epochs": ["stages.stage2.train.epochs=4.0", "stages.stage2.scale.epochs=null"],
    "eval_limit": ["evaluation.limit=10"],
}


# World settings added since the freeze, at their defaults: the held-out splits' sizes (the test
# split's, eval_per_task, is frozen).
NEW_WORLD_KEYS = {"dev_per_task": 50, "paraphrase_per_task": 50}
# Stages added since the freeze, turned off: the rest must still plan what the freeze did.
NEW_STAGES_OFF = ["stages.tiny.enabled=false"]


def placeholders(value):
    if isinstance(value, dict):
        return {k: placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [placeholders(v) for v in value]
    if isinstance(value, str):
        for path, name in ((VISION, "$VISION"), (LLM, "$LLM"), (OUT, "$OUT"), (WORLD, "$WORLD"), (CACHE, "$CACHE")):
            value = value.replace(str(path), name)
    return value


def planned(overrides: list[str]) -> dict:
    """What the recipe runner sets up for these overrides, in the fixture's form."""
    recipe = load_recipe("quickstart", [f"world.dir={WORLD}", f"components.cache={CACHE}", *FROZEN_LENGTHS,
                                        *NEW_STAGES_OFF, *overrides])
    plans = plan_stages(recipe, OUT, WORLD, Parts(VISION, LLM, FEATURE_LAYER))
    return {
        "flags": None,
        "world": recipe.world_settings().to_dict(),
        "components": dataclasses.asdict(recipe.component_settings()),
        "mixtures": {p.mixture_file: placeholders(yaml.safe_dump(p.mixture, sort_keys=False))
                     for p in plans if p.mixture is not None},
        # the text run_stage writes to OUT/configs/<name>.yaml, and what load_config reads back
        "stage_files": {p.name: placeholders(yaml.safe_dump(p.config, sort_keys=False)) for p in plans},
        "stages": {p.name: placeholders(build_config(yaml.safe_load(yaml.safe_dump(p.config, sort_keys=False)))
                                        .model_dump(mode="json"))
                   for p in plans},
        "evaluation": {"tasks": eval_task_names(recipe), "limit": recipe.evaluation.limit,
                       "batch_size": recipe.evaluation.batch_size, "controls": recipe.evaluation.controls},
        "stage_order": [p.name for p in plans],
    }


def frozen_fields(resolved: dict, frozen: dict) -> dict:
    """``resolved`` cut to the fields the freeze knew. Fields added to TrainConfig since then are
    at their defaults here: the stage files, compared as text, set none of them."""
    return {key: frozen_fields(value, frozen[key]) if isinstance(value, dict) and isinstance(frozen.get(key), dict)
            else value for key, value in resolved.items() if key in frozen}


def test_every_frozen_case_has_its_overrides():
    assert set(OVERRIDES) == set(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_recipe_plans_what_the_python_recipe_did(case):
    expected = EXPECTED[case]
    got = planned(OVERRIDES[case])
    assert got["stage_order"] == expected["stage_order"]
    for name in expected["stage_order"]:
        assert frozen_fields(got["stages"][name], expected["stages"][name]) == expected["stages"][name], name
    assert got["world"] == {**expected["world"], **NEW_WORLD_KEYS}
    for key in ("components", "mixtures", "stage_files", "evaluation"):
        assert got[key] == expected[key], key


@pytest.mark.parametrize("case, flags", [("small_seed3", ["--scale", "0.5", "--seed", "3"]),
                                         ("eval_limit", ["--eval-limit", "10"]), ("large", ["--scale", "2"])])
def test_quickstart_flags_that_remain_set_the_same_keys(case, flags):
    parser = argparse.ArgumentParser()
    quickstart_cli.add_arguments(parser)
    args = parser.parse_args(["--world", str(WORLD), "--cache", str(CACHE), *flags])
    assert planned(quickstart_cli.shorthand_overrides(args)) == planned(OVERRIDES[case])


def test_anyres_ablation_arms_share_one_world_and_cache_and_differ_only_in_the_crop(tmp_path):
    plan = plan_lab("ablations/anyres", tmp_path, ["evaluation.limit=5"], seeds=1)
    recipes = {run.arm: run.recipe for run in plan.runs}
    assert sorted(recipes) == ["anyres", "single_crop"]
    anyres, single = recipes["anyres"], recipes["single_crop"]
    assert Path(anyres.world.dir).parent == tmp_path / "worlds" and anyres.world.dir == single.world.dir
    assert anyres.components.cache == single.components.cache == str(tmp_path / "cache")
    assert anyres.evaluation.limit == single.evaluation.limit == 5
    assert anyres.model_dump(exclude={"model"}) == single.model_dump(exclude={"model"})
    assert single.model.visual == {**anyres.model.visual, "image_mode": "squash", "image_newline": "image"}
