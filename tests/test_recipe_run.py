"""A tiny recipe run end to end by the generic runner, as a lab of two arms at one seed (one world and
one component cache for both): world, components, its two stages, evaluation, controls, report."""

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
        "title": "tiny arms", "recipe": str(TINY), "tasks": ["count"],
        "overrides": {"evaluation.tasks": ["color", "count", "multiview"]},
        # the second arm also changes a visual setting at evaluation only: it evaluates a loaded model
        "arms": {"base": {}, "squash": {"model.visual.image_mode": "squash", "model.visual.image_newline": "image",
                                        "evaluation.visual.video_frames": 2}}}))
    out = tmp_path / "out"
    # `recipe ablate` is `llavakit lab`; one job: the second arm finds the components the first made
    assert main(["recipe", "ablate", str(ablation), "--out", str(out), "--jobs", "1",
                 "--set", "evaluation.batch_size=1"]) == 0

    runs = {arm: out / arm / "seed-0" for arm in ("base", "squash")}
    results = {arm: json.loads((run / "results.json").read_text()) for arm, run in runs.items()}
    base = results["base"]
    assert set(base) == {"eval", "eval_dev", "eval_paraphrase", "controls", "stages", "components", "seconds",
                         "device", "model", "settings", "recipe"}
    # every split, each task's row: accuracy, chance, n (the recipe's limit of 2) and the task's version
    for key in ("eval", "eval_dev", "eval_paraphrase"):
        assert list(base[key]) == ["color", "count", "multiview"], key
        for task, row in base[key].items():
            assert set(row) - {"by_category"} == {"accuracy", "chance", "n", "version"} and row["n"] == 2
            assert row["version"] >= 1 and 0 <= row["accuracy"] <= 1 and 0 < row["chance"] < 1
            # a multi-image task's score per placement (the world's first held-out pairs are interleaved)
            assert ("by_category" in row) == (task == "multiview")
        parts = base[key]["multiview"]["by_category"]
        assert set(parts) <= {"interleaved", "front"} and sum(part["n"] for part in parts.values()) == 2
    predictions = runs["base"] / "eval" / "test_paraphrase" / "predictions" / "synth_color.jsonl"
    assert [json.loads(line)["id"] for line in predictions.read_text().splitlines()] == [
        "test_paraphrase-color-00000", "test_paraphrase-color-00001"]
    assert list(base["controls"]) == ["color_shuffled"] and set(base["controls"]["color_shuffled"]) == {
        "accuracy", "chance", "n", "version"}
    assert [stage["name"] for stage in base["stages"]] == ["align", "instruct"]
    assert all(stage["steps"] == 1 and stage["seconds"] >= 0 and stage["final_loss"] > 0 for stage in base["stages"])
    assert base["settings"]["seed"] == 0 and "seed=0" in base["settings"]["overrides"]
    assert "evaluation.batch_size=1" in base["settings"]["overrides"]
    # the recipe as it ran, overrides applied, next to the results
    assert yaml.safe_load((runs["base"] / "recipe.yaml").read_text()) == base["recipe"]
    assert results["squash"]["recipe"]["model"]["visual"]["image_mode"] == "squash"
    assert results["squash"]["recipe"]["evaluation"]["visual"] == {"video_frames": 2}
    assert results["squash"]["eval"]["color"]["n"] == 2
    world = Path(base["recipe"]["world"]["dir"])
    assert base["recipe"]["seed"] == 0 and world.parent == out / "worlds"
    assert results["squash"]["recipe"]["world"]["dir"] == str(world)
    # both arms on the one world, the second with the components the first trained
    assert results["squash"]["components"]["cached"] == {"vision": True, "language": True}
    assert not (runs["base"] / "world").exists() and (world / "world.json").is_file()
    # each stage's config (and the mixture) rerunnable with `llavakit train`
    instruct = yaml.safe_load((runs["base"] / "configs" / "instruct.yaml").read_text())
    assert instruct["model"] == {"checkpoint": str(runs["base"] / "align" / "model")}
    assert instruct["data"]["sources"] == [{"path": str(runs["base"] / "configs" / "instruct_mixture.yaml")}]
    mixture = yaml.safe_load((runs["base"] / "configs" / "instruct_mixture.yaml").read_text())
    assert [d["sampling_strategy"] for d in mixture["datasets"]] == ["first:6", "first:2"]
    assert mixture["seed"] == 0
    assert (runs["base"] / "model" / "llavakit_config.json").is_file()
    report = (runs["base"] / "report.md").read_text()
    assert "# llavakit tiny report" in report
    assert "| task | version | chance | dev (n=2) | test (n=2) | test_paraphrase (n=2) |" in report
    table = (out / "lab.md").read_text().splitlines()
    assert table[0] == "# tiny arms" and "| task | chance | base | squash |" in table
    assert any(line.startswith("| **count** |") for line in table)
