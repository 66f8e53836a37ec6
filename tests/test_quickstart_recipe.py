"""The quickstart recipe's plan (recipes/quickstart.yaml through the recipe runner's planner): which
stage starts from which, and the drill phases whose mixtures must load against a real generated
world. No training here (test_quickstart runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llavakit.data.mixture import load_mixture
from llavakit.recipe import load_recipe
from llavakit.recipe.plan import Parts, StagePlan, plan_stages
from llavakit.synth import WorldSettings, generate_world

SMALL = WorldSettings(stage1_captions=8, train_per_task=12, eval_per_task=4, dev_per_task=4, paraphrase_per_task=4,
                      motion_drill=20)
GROUNDING_MIXTURE, TINY_MIXTURE, SIDE_LISTING_MIXTURE, RELATION_MIXTURE, MOTION_MIXTURE = (
    "grounding_mixture.yaml", "tiny_mixture.yaml", "side_listing_mixture.yaml", "relation_mixture.yaml",
    "motion_mixture.yaml")
NO_MOTION = ["world.motion_drill=0", "stages.motion.enabled=false"]


def plans(tmp_path: Path, world: Path | None = None, motion_drill: bool = True) -> dict[str, StagePlan]:
    recipe = load_recipe("quickstart", [] if motion_drill else NO_MOTION)
    parts = Parts(tmp_path / "vision", tmp_path / "llm", -1)
    return {p.name: p for p in plan_stages(recipe, tmp_path / "out", world or tmp_path / "world", parts)}


def configs(tmp_path: Path, motion_drill: bool = True) -> dict:
    return {name: plan.config for name, plan in plans(tmp_path, motion_drill=motion_drill).items()}


def write_mixture(world: Path, tmp_path: Path, stage: str) -> Path:
    plan = plans(tmp_path, world)[stage]
    path = tmp_path / plan.mixture_file
    path.write_text(yaml.safe_dump(plan.mixture))
    return path


def starts(stages: dict) -> dict:
    return {name: Path(c["model"]["checkpoint"]).parent.name if "checkpoint" in c["model"] else None
            for name, c in stages.items()}


def drill_checks(stages: dict, names: list[str]) -> None:
    """Drills: tower frozen, constant rate (and, but for motion, ended once learned)."""
    for name in names:
        assert {"pattern": r"^vision_tower\.", "frozen": True} in stages[name]["trainable"]
        assert stages[name]["optim"]["schedule"] == "constant"
        assert name == "motion" or stages[name]["stop_at_loss"] is not None


def test_default_recipe_goes_through_the_drills_in_order_to_stage2(tmp_path):
    stages = configs(tmp_path)
    order = ["stage1", "stage1_5", "listing", "grounding", "tiny", "side_listing", "relation", "motion", "stage2"]
    assert list(stages) == order
    assert starts(stages) == {"stage1": None, **{later: earlier for earlier, later in zip(order, order[1:])}}
    world, mixtures = tmp_path / "world", tmp_path / "out" / "configs"
    assert stages["listing"]["data"]["sources"] == [{"path": str(world / "stage15_listing.jsonl"),
                                                     "image_folder": str(world)}]
    assert stages["grounding"]["data"]["sources"] == [{"path": str(mixtures / GROUNDING_MIXTURE)}]
    assert stages["tiny"]["data"]["sources"] == [{"path": str(mixtures / TINY_MIXTURE)}]
    assert stages["side_listing"]["data"]["sources"] == [{"path": str(mixtures / SIDE_LISTING_MIXTURE)}]
    assert stages["relation"]["data"]["sources"] == [{"path": str(mixtures / RELATION_MIXTURE)}]
    assert stages["motion"]["data"]["sources"] == [{"path": str(mixtures / MOTION_MIXTURE)}]
    drill_checks(stages, ["listing", "grounding", "tiny", "side_listing", "relation", "motion"])


def test_without_the_motion_drill_stage2_starts_from_the_relation_phase(tmp_path):
    stages, without = configs(tmp_path), configs(tmp_path, motion_drill=False)
    assert "motion" not in without and starts(without)["stage2"] == "relation"
    assert stages["stage2"]["epochs"] == without["stage2"]["epochs"]
    assert all(stages[name] == without[name] for name in list(without)[:-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL, progress=False)


def test_grounding_mixture_loads_every_grounding_scene_and_tiny_question_and_half_the_listings(world, tmp_path):
    path = write_mixture(world, tmp_path, "grounding")
    assert path.name == GROUNDING_MIXTURE
    mixture = load_mixture(path)
    scenes, tiny = 10 * SMALL.train_per_task, SMALL.train_per_task
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_grounding", scenes, scenes), ("stage15_tiny", tiny, tiny), ("stage15_listing", scenes, scenes // 2)]
    images = {Path(e.image_folder) / e.record["image"] for e in mixture.entries}
    assert len(images) == scenes + tiny + scenes // 2 and all(path.is_file() for path in images)


def test_tiny_phase_loads_every_tiny_question_and_a_tenth_of_the_grounding_scenes(world, tmp_path):
    path = write_mixture(world, tmp_path, "tiny")
    assert path.name == TINY_MIXTURE
    mixture = load_mixture(path)
    tiny, scenes = SMALL.train_per_task, 10 * SMALL.train_per_task
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_tiny", tiny, tiny), ("stage15_grounding", scenes, scenes // 10)]
    questions = [e.record["conversations"][0]["value"] for e in mixture.entries]
    assert sum("tiny object" in q for q in questions) == tiny


@pytest.mark.parametrize("name, stage, drill", [(SIDE_LISTING_MIXTURE, "side_listing", "stage15_side_listing"),
                                               (RELATION_MIXTURE, "relation", "stage15_relation")])
def test_side_phases_load_every_drill_scene_and_a_third_of_the_listings(world, tmp_path, name, stage, drill):
    path = write_mixture(world, tmp_path, stage)
    assert path.name == name
    loaded = load_mixture(path)
    scenes = 10 * SMALL.train_per_task
    third = -(-scenes * 33 // 100)
    assert [(p.name, p.available, p.selected) for p in loaded.parts] == [(drill, scenes, scenes),
                                                                         ("stage15_listing", scenes, third)]
    answers = [e.record["conversations"][-1]["value"] for e in loaded.entries]
    sides = sum(any(f" {word}" in a for word in ("left", "right", "above", "below")) for a in answers)
    assert sides == scenes and len(answers) == scenes + third


def test_motion_mixture_loads_every_clip_a_third_of_the_grounding_listing_and_relation_scenes_half_the_tiny_all_shape(
        world, tmp_path):
    path = write_mixture(world, tmp_path, "motion")
    assert path.name == MOTION_MIXTURE
    mixture = load_mixture(path)
    clips, scenes, tiny = SMALL.motion_drill, 10 * SMALL.train_per_task, SMALL.train_per_task
    shapes = round(5 / 3 * SMALL.train_per_task)
    third = -(-scenes * 33 // 100)
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_motion", clips, clips), ("stage15_grounding", scenes, third), ("stage15_listing", scenes, third),
        ("stage15_tiny", tiny, tiny // 2), ("stage15_relation", scenes, third),
        ("stage15_shape", shapes, shapes)]
    videos = [Path(e.video_folder) / e.record["video"] for e in mixture.entries if "video" in e.record]
    assert len(videos) == clips and all(path.is_file() for path in videos)


def test_the_seeds_four_stage_recipe_puts_the_drills_inside_its_stages_mixtures(world, tmp_path):
    recipe = load_recipe("quickstart-seeds", [f"world.motion_drill={SMALL.motion_drill}"])
    parts = Parts(tmp_path / "vision", tmp_path / "llm", -1)
    stages = {p.name: p for p in plan_stages(recipe, tmp_path / "out", world, parts)}
    order = ["stage1", "stage1_5", "stage2_single", "stage2_onevision"]
    assert list(stages) == order
    assert starts({name: plan.config for name, plan in stages.items()}) == {
        "stage1": None, **{later: earlier for earlier, later in zip(order, order[1:])}}
    datasets = {stage.name: [part.dataset for part in stage.mixture] for stage in recipe.enabled_stages()}
    assert datasets["stage1_5"][0] == "recaptions" and datasets["stage2_single"][0] == "instruct_single"
    assert datasets["stage2_onevision"][:2] == ["instruct_onevision", "motion"]
    for name in ("stage2_single", "stage2_onevision"):
        assert {"pattern": r"^vision_tower\.", "frozen": True} in stages[name].config["trainable"]
    # Each stage's mixture loads against a real world: the single-image stage shows one image a
    # sample (or none: text-only), the OneVision stage's instructions show several or a video.
    loaded = {}
    for name in ("stage1_5", "stage2_single", "stage2_onevision"):
        path = tmp_path / stages[name].mixture_file
        path.write_text(yaml.safe_dump(stages[name].mixture))
        loaded[name] = load_mixture(path)
    single = [e.record for e in loaded["stage2_single"].entries]
    assert single and not any("video" in r or isinstance(r.get("image"), list) for r in single)
    onevision = [e.record for e in loaded["stage2_onevision"].entries if e.record["id"].startswith("train-")]
    assert any("video" in r for r in onevision) and any(isinstance(r.get("image"), list) for r in onevision)
