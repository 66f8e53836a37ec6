"""Recipe files: refused before anything runs (naming the key or dataset), overridden with --set,
written back as they ran, and every world file a named dataset. Nothing trains here
(test_recipe_run runs a tiny recipe end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llavakit.cli import main
from llavakit.recipe import RECIPES_DIR, RecipeError, load_recipe
from llavakit.recipe.schema import validate_recipe
from llavakit.synth import WorldSettings, generate_world
from llavakit.synth.datasets import DATASETS, dataset_sizes
from llavakit.synth.world import (
    DRILL_FILES,
    STAGE1_FILE,
    STAGE2_FILE,
    STAGE2_ONEVISION_FILE,
    STAGE2_SINGLE_FILE,
    STAGE15_FILE,
)

REPO = Path(__file__).resolve().parents[1]


def refused(*overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe("quickstart", list(overrides))
    message = str(err.value)
    assert "\n" not in message  # one line
    return message


def test_unknown_keys_are_refused_by_their_path():
    assert "colour_depth: Extra inputs are not permitted" in refused("colour_depth=3")
    assert "world.motion_drills: Extra inputs are not permitted" in refused("world.motion_drills=5")
    assert "components.vision.position_weigth" in refused("components.vision.position_weigth=1")
    assert "model.visual.image_modes: Extra inputs are not permitted" in refused("model.visual.image_modes=squash")
    assert "stages.grounding.train.optim.lrr: Extra inputs are not permitted" in refused(
        "stages.grounding.train.optim.lrr=0.1")
    assert "stages.motion.mixture.0.takes" in refused("stages.motion.mixture.0.takes=all")
    assert "evaluation.split" in refused("evaluation.split=test")
    assert "evaluation.visual.video_frame: Extra inputs are not permitted" in refused("evaluation.visual.video_frame=8")


def test_evaluation_names_the_worlds_held_out_splits():
    assert load_recipe("quickstart").evaluation.splits == ["dev", "test", "test_paraphrase"]
    from llavakit.recipe.evaluation import control_split

    assert control_split(load_recipe("quickstart")) == "test"
    dev_only = load_recipe("quickstart", ["evaluation.splits=[dev]"])
    assert dev_only.evaluation.splits == ["dev"] and control_split(dev_only) == "dev"  # a choosing run leaves test alone
    assert "evaluation.splits.0: Input should be 'dev', 'test' or 'test_paraphrase'" in refused(
        "evaluation.splits=[eval]")
    assert "evaluation.splits: Value error, a split is listed twice" in refused("evaluation.splits=[dev, dev]")
    assert "evaluation.splits: List should have at least 1 item" in refused("evaluation.splits=[]")


def test_keys_the_runner_sets_are_refused_in_a_stage():
    assert "stages.stage2.train.output_dir: set by the runner" in refused("stages.stage2.train.output_dir=/tmp/x")
    assert "stages.listing.train.data.sources" in refused("stages.listing.train.data.sources=[{path: a.jsonl}]")


def test_unknown_dataset_is_refused_by_name():
    message = refused("stages.grounding.mixture=[{dataset: groundings}, {dataset: tiny}]")
    assert message.startswith("stages.grounding.mixture: unknown dataset 'groundings'")
    assert "grounding, tiny, listing" in message  # what there is


def test_a_dataset_the_world_does_not_generate_is_refused():
    message = refused("world.motion_drill=0")  # the motion stage still asks for its clips
    assert message == "stages.motion.mixture: dataset 'motion' is only generated when world.motion_drill > 0"
    load_recipe("quickstart", ["world.motion_drill=0", "stages.motion.enabled=false"])


def test_a_stage_that_trains_nothing_is_refused():
    message = refused("stages.listing.train.trainable=[{pattern: '^vision_tower', frozen: true}, "
                      "{pattern: ., frozen: true}]")
    assert message == "stages.listing.train.trainable: every module is frozen; the stage would train nothing"
    # the projector alone is something
    load_recipe("quickstart", ["stages.listing.train.trainable=[{pattern: '^multi_modal_projector'}, "
                               "{pattern: ., frozen: true}]"])


def test_a_mixture_of_zero_samples_is_refused():
    message = refused("stages.relation.mixture=[{dataset: relation, take: 'first:0'}]")
    assert message == "stages.relation.mixture: resolves to zero samples (relation (first:0))"
    assert "resolves to zero samples (no dataset)" in refused("stages.relation.mixture=[]")
    assert "take 'first:99999' asks for 99999 samples; the world has 3000" in refused(
        "stages.relation.mixture=[{dataset: relation, take: 'first:99999'}]")
    assert "stages.relation.mixture.0.take" in refused("stages.relation.mixture=[{dataset: relation, take: half}]")
    assert refused("scale=0.01") == ("stages.stage1.mixture: 20 samples cannot fill one global batch of 32 "
                                     "(stages.stage1.train.global_batch_size)")


def test_starts_must_be_earlier_stages_that_run():
    assert "stages.stage1_5.start: 'stage2' is not an earlier stage" in refused("stages.stage1_5.start=stage2")
    assert "stages.stage1.start: 'previous', but it is the first stage" in refused("stages.stage1.start=previous")
    assert "stages.stage2.start: 'motion' is not an earlier stage" in refused(
        "world.motion_drill=0", "stages.motion.enabled=false", "stages.stage2.start=motion")


def test_bad_set_paths_and_values_are_refused():
    assert "--set stages.stage3: no item named 'stage3'" in refused("stages.stage3.train.epochs=1")
    assert "expected key.path=value" in refused("seed")
    assert "evaluation.tasks: unknown task 'colour'" in refused("evaluation.tasks=[colour]")
    assert "invalid WorldSettings: hires_side" in refused("world.hires_side=65")
    assert "evaluation.visual.video_frames: Input should be greater than or equal to 1" in refused(
        "evaluation.visual.video_frames=0")
    assert "train_image_format must be one of both, interleaved, front" in refused("world.train_image_format=side")
    assert "evaluation.controls: 'video_direction' shows no image to swap" in refused(
        "evaluation.controls=[color, video_direction]")


def test_quickstart_flags_are_overrides_of_the_recipes_top_level_keys(tmp_path):
    import argparse

    from llavakit.quickstart.run import add_arguments, shorthand_overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--world", "123", "--cache", str(tmp_path / "a: b"), "--scale", "0.5",
                              "--set", "seed=2"])
    recipe = load_recipe("quickstart", shorthand_overrides(args))
    assert recipe.world.dir == "123" and recipe.components.cache == str(tmp_path / "a: b")
    assert recipe.scale == 0.5 and recipe.seed == 2 and recipe.evaluation.limit is None


def test_refused_recipe_writes_nothing_and_says_why_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["recipe", "run", "quickstart", "--out", str(out), "--set", "stages.motion.mixture=[]"]) == 2
    assert main(["quickstart", "--out", str(out), "--set", "stages.grounding.mixture=[{dataset: nope}]"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("llavakit recipe: refused: stages.motion.mixture: resolves to zero samples")
    assert err[1].startswith("llavakit quickstart: refused: stages.grounding.mixture: unknown dataset 'nope'")
    assert not out.exists()


def test_overrides_reach_stages_by_name_and_values_are_yaml():
    recipe = load_recipe("quickstart", ["stages.stage2.train.epochs=8", "stages.grounding.mixture.2.take=first:10",
                                        "model.visual.max_grids=4", "evaluation.limit=null", "scale=0.5"])
    stages = {stage.name: stage for stage in recipe.stages}
    assert stages["stage2"].train["epochs"] == 8 and stages["grounding"].mixture[2].take == "first:10"
    assert recipe.model.visual["max_grids"] == 4 and recipe.scale == 0.5 and recipe.world_settings().scale == 0.5


def test_an_override_of_one_stage_leaves_the_stages_sharing_its_yaml_anchor_alone():
    recipe = load_recipe("quickstart", ["stages.listing.train.data.settings.max_length=1024",
                                        "stages.listing.train.optim.lr=0.5"])
    stages = {stage.name: stage for stage in recipe.stages}
    assert stages["listing"].train["data"]["settings"]["max_length"] == 1024
    assert stages["listing"].train["optim"]["lr"] == 0.5
    for name in ("stage1_5", "grounding", "stage2"):
        assert stages[name].train["data"]["settings"]["max_length"] == 2048
    assert stages["grounding"].train["optim"]["lr"] == 1e-3  # the same anchor (&drill_optim) as listing's


def test_the_recipe_as_it_ran_validates_back_to_the_same_recipe(tmp_path):
    recipe = load_recipe("quickstart", ["seed=4", "stages.motion.enabled=false", "world.motion_drill=0"])
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    (tmp_path / "recipe.yaml").write_text(text)
    assert load_recipe(tmp_path / "recipe.yaml") == recipe


def test_check_prints_the_plan(capsys):
    assert main(["recipe", "check", "quickstart", "--set", "world.motion_drill=0",
                 "--set", "stages.motion.enabled=false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "recipe quickstart: seed 0, scale 1.0"
    assert any(line.split()[:2] == ["motion", "(disabled)"] for line in lines)
    assert any(line.split()[:3] == ["stage2", "from", "relation"] for line in lines)


def test_top_level_recipes_folder_is_the_packaged_one():
    assert (REPO / "recipes").resolve() == RECIPES_DIR.resolve()
    assert (REPO / "recipes" / "quickstart.yaml").read_bytes() == (RECIPES_DIR / "quickstart.yaml").read_bytes()
    assert load_recipe(REPO / "recipes" / "quickstart.yaml") == load_recipe("quickstart")


def test_every_world_file_is_a_named_dataset():
    files = {dataset.file for dataset in DATASETS.values()}
    assert set(DRILL_FILES) | {STAGE1_FILE, STAGE15_FILE, STAGE2_FILE, STAGE2_SINGLE_FILE, STAGE2_ONEVISION_FILE} == files
    assert DATASETS["motion"].videos and not DATASETS["motion"].images
    assert DATASETS["instruct"].videos and DATASETS["instruct"].images


def test_dataset_sizes_from_settings_are_what_the_world_writes(tmp_path):
    settings = WorldSettings(stage1_captions=6, train_per_task=3, eval_per_task=2, dev_per_task=2,
                             paraphrase_per_task=2, motion_drill=4)
    world = generate_world(tmp_path / "world", settings, progress=False)
    files = json.loads((world / "world.json").read_text())["files"]
    assert dataset_sizes(settings) == {name: files[d.file] for name, d in DATASETS.items()}
    assert "motion" not in dataset_sizes(WorldSettings(motion_drill=0))
    # The single-image and OneVision files split the instructions: same records, same order.
    read = lambda file: [json.loads(line) for line in (world / file).read_text().splitlines()]  # noqa: E731
    single, onevision = read(STAGE2_SINGLE_FILE), read(STAGE2_ONEVISION_FILE)
    assert sorted(r["id"] for r in single + onevision) == sorted(r["id"] for r in read(STAGE2_FILE))
    assert all("video" not in r and isinstance(r.get("image", ""), str) for r in single)
    assert all("video" in r or isinstance(r.get("image"), list) for r in onevision)


def test_every_stage_name_the_quickstart_runs_and_a_disabled_stage_is_skipped():
    recipe = load_recipe("quickstart")
    assert [s.name for s in recipe.enabled_stages()] == [
        "stage1", "stage1_5", "listing", "grounding", "tiny", "side_listing", "relation", "motion", "stage2"]
    with pytest.raises(RecipeError, match="stages: the names listing are used more than once"):
        data = yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text())
        data["stages"][3]["name"] = "listing"
        from llavakit.recipe.plan import check

        check(validate_recipe(data, "x"))


def test_quickstart_and_recipe_run_of_the_shipped_file_run_the_same_recipe(tmp_path, monkeypatch):
    import llavakit.recipe as recipe_package
    import llavakit.recipe.runner as runner

    calls = []
    fake = lambda recipe, out, source="", overrides=(): calls.append((recipe, Path(out), source))  # noqa: E731
    monkeypatch.setattr(runner, "run_recipe", fake)
    monkeypatch.setattr(recipe_package, "run_recipe", fake)
    assert main(["quickstart", "--out", str(tmp_path / "a"), "--scale", "0.5"]) == 0
    assert main(["recipe", "run", str(REPO / "recipes" / "quickstart.yaml"), "--out", str(tmp_path / "b"),
                 "--set", "scale=0.5"]) == 0
    (first, out_a, source_a), (second, out_b, source_b) = calls
    assert first == second and first.scale == 0.5
    assert Path(source_a).resolve() == Path(source_b).resolve() == (RECIPES_DIR / "quickstart.yaml").resolve()


@pytest.mark.parametrize("split", ["dev", "test", "test_paraphrase"])
def test_a_split_is_scored_by_the_task_file_over_that_splits_records(split):
    from llavakit.evaluation.task_spec import load_task
    from llavakit.recipe.evaluation import split_task

    for task in ("color", "position", "multiview"):
        spec, shipped = split_task(task, split), load_task(f"synth_{task}")
        assert spec.data.file == f"{split}/{task}.jsonl"
        assert spec.model_dump(exclude={"data"}) == shipped.model_dump(exclude={"data"})  # version, metric, prompt
        assert spec.data.model_dump(exclude={"file"}) == shipped.data.model_dump(exclude={"file"})


def test_evaluation_visual_settings_change_the_evaluated_model_not_the_saved_one(onevision_dir):
    from llavakit.recipe.evaluation import evaluation_model

    assert evaluation_model(load_recipe("quickstart"), onevision_dir) == onevision_dir  # nothing to change: the folder
    saved = {p.name: p.read_bytes() for p in onevision_dir.iterdir()}
    model = evaluation_model(load_recipe("quickstart", ["evaluation.visual.video_frames=3"]), onevision_dir)
    assert model.config.visual.video_frames == 3 and model.processor.visual.video_frames == 3
    assert {p.name: p.read_bytes() for p in onevision_dir.iterdir()} == saved
