"""docs/config-reference.md is generated from the pydantic schemas: it lists every field of the
training and model configs, the recipe files and the lab's ablation file, each with a description,
and is regenerated when a field changes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from llavakit.config import LlavaConfig
from llavakit.recipe.ablation import Ablation
from llavakit.recipe.model_recipe import ModelRecipe
from llavakit.recipe.schema import Recipe
from llavakit.synth.settings import WorldSettings
from llavakit.train.config import TrainConfig
from llavakit.train.schema_doc import REGENERATE, fields, markdown, missing_descriptions

DOC = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_the_reference_is_current():
    current = markdown()
    assert DOC.is_file(), f"docs/config-reference.md is missing; regenerate it: {REGENERATE}"
    written = DOC.read_text()
    documented = {line.split("`")[1] for line in written.splitlines() if line.startswith("| `")}
    expected = {path for model in (TrainConfig, LlavaConfig, Recipe, ModelRecipe, Ablation)
                for path, _ in fields(model)}
    assert not expected - documented, (f"fields missing from docs/config-reference.md: "
                                       f"{', '.join(sorted(expected - documented))}; regenerate it: {REGENERATE}")
    assert not documented - expected, (f"docs/config-reference.md lists fields that no longer exist: "
                                       f"{', '.join(sorted(documented - expected))}; regenerate it: {REGENERATE}")
    assert written == current, f"docs/config-reference.md is stale (a type, default or description changed); " \
                               f"regenerate it: {REGENERATE}"


def test_every_field_has_a_description():
    assert missing_descriptions() == [], "give these fields Field(description=...), then regenerate the reference"


def test_nested_fields_are_listed_with_their_defaults():
    text = markdown()
    assert "| `eval.best_metric` | str \\| null | `null` |" in text
    assert "| `data.sources[].image_folder` |" in text
    assert "| `optim.warmup_ratio` | float | `0.03` |" in text
    assert "| `visual.max_grids` | int \\| null | `9` |" in text
    assert "| `stages[].mixture[].take` | str | `\"all\"` |" in text
    assert "| `evaluation.limit` | int \\| null | `null` |" in text
    assert "| `stages[].data[].image_folder` |" in text
    assert "| `arms` | dict[str, dict[str, any]] | `required` |" in text


def test_settings_dataclass_sections_carry_their_descriptions():
    """The recipe's world and components sections are built from settings dataclasses: each field's
    description comes from the dataclass field, and every dataclass field the recipe sets is listed."""
    world = dict(fields(Recipe))
    motion = next(f for f in dataclasses.fields(WorldSettings) if f.name == "motion_drill")
    assert world["world.motion_drill"].description == motion.metadata["description"]
    assert "| `world.motion_drill` | int | `0` |" in markdown()
    assert "| `components.vision.position_weight` | float | `0.0` |" in markdown()
    listed = {path.removeprefix("world.") for path in world if path.startswith("world.")}
    assert listed == {f.name for f in dataclasses.fields(WorldSettings)} - {"seed", "scale"} | {"dir"}


def test_train_schema_command(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "llavakit", "train", "--schema"], capture_output=True, text=True,
                           check=True).stdout
    assert shown == markdown()
    schema = json.loads(subprocess.run([sys.executable, "-m", "llavakit", "train", "--schema", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert set(schema["properties"]) == set(TrainConfig.model_fields)
    assert schema["properties"]["report_to"]["description"].startswith("where metrics go")
