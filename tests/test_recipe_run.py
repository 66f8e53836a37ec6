"""A tiny recipe run end to end by the generic runner, as an ablation of two arms (one world and one
component cache for both): world, components, its two stages, evaluation, controls, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llavakit.cli import main

pytestmark = pytest.mark.slow  # end to end: a world, components, two arms of two stages, evaluations

TINY = Path(__file__).parent / "fixtures" / "recipe" / "tiny.yaml"


def test_an_ablation_of_a_tiny_recipe_runs_every_arm_and_writes_what_the_quickstart_writes(tmp_path):
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(yaml.safe_dump({
        "title": "tiny arms", "recipe": str(TINY), "first_tasks": ["count"],
        "arms": {"base": {}, "squash": {"model.visual.image_mode": "squash", "model.visual.image_newline": "image"}}}))
    out = tmp_path / "out"
    assert main(["recipe", "ablate", str(ablation), "--out", str(out), "--set", "seed=1"]) == 0

    results = {arm: json.loads((out / arm / "results.json").read_text()) for arm in ("base", "squash")}
    base = results["base"]
    assert set(base) == {"eval", "controls", "stages", "components", "seconds", "device", "model", "settings",
                         "recipe"}
    assert list(base["eval"]) == ["color", "count"] and all(row["n"] == 2 for row in base["eval"].values())
    assert list(base["controls"]) == ["color_shuffled"]
    assert list(base["stages"]) == ["align", "instruct"]
    assert all(stage["steps"] == 1 for stage in base["stages"].values())
    assert base["settings"]["seed"] == 1 and "seed=1" in base["settings"]["overrides"]
    # the recipe as it ran, overrides applied, next to the results
    assert yaml.safe_load((out / "base" / "recipe.yaml").read_text()) == base["recipe"]
    assert results["squash"]["recipe"]["model"]["visual"]["image_mode"] == "squash"
    assert base["recipe"]["seed"] == 1 and base["recipe"]["world"]["dir"] == str(out / "world")
    # both arms on the one world, the second with the components the first trained
    assert results["squash"]["components"]["cached"] == {"vision": True, "language": True}
    assert not (out / "base" / "world").exists() and (out / "world" / "world.json").is_file()
    # each stage's config (and the mixture) rerunnable with `llavakit train`
    instruct = yaml.safe_load((out / "base" / "configs" / "instruct.yaml").read_text())
    assert instruct["model"] == {"checkpoint": str(out / "base" / "align" / "model")}
    assert instruct["data"]["sources"] == [{"path": str(out / "base" / "configs" / "instruct_mixture.yaml")}]
    mixture = yaml.safe_load((out / "base" / "configs" / "instruct_mixture.yaml").read_text())
    assert [d["sampling_strategy"] for d in mixture["datasets"]] == ["first:6", "first:2"]
    assert mixture["seed"] == 1
    assert (out / "base" / "model" / "llavakit_config.json").is_file()
    assert "# llavakit tiny report" in (out / "base" / "report.md").read_text()
    table = (out / "ablation.md").read_text().splitlines()
    assert table[0] == "# tiny arms" and table[2] == "| task | chance | base | squash |"
    assert table[4].startswith("| count |")
