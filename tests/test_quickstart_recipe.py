"""The quickstart's stage configs as data: which stage starts from which, and the drill phases
(grounding, motion and the opt-in relation phase) whose mixtures must load against a real generated
world. No training here (test_quickstart runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llavakit.data.mixture import load_mixture
from llavakit.quickstart.run import (
    GROUNDING_MIXTURE,
    MOTION_MIXTURE,
    RELATION_MIXTURE,
    grounding_mixture,
    motion_mixture,
    relation_mixture,
    stage_configs,
)
from llavakit.synth import WorldSettings, generate_world

SMALL = WorldSettings(stage1_captions=8, train_per_task=12, eval_per_task=4, motion_drill=20, position_drill=30)


def configs(tmp_path: Path, motion_drill: bool = True, position_drill: bool = False) -> dict:
    return stage_configs(tmp_path / "out", tmp_path / "world", tmp_path / "vision", tmp_path / "llm", 1.0, 0,
                         None, True, motion_drill=motion_drill, position_drill=position_drill)


def starts(stages: dict) -> dict:
    return {name: Path(c["model"]["checkpoint"]).parent.name if "checkpoint" in c["model"] else None
            for name, c in stages.items()}


def drill_checks(stages: dict, names: list[str]) -> None:
    """Drills: tower frozen, constant rate (and, but for motion, ended once learned)."""
    for name in names:
        assert {"pattern": r"^vision_tower\.", "frozen": True} in stages[name]["trainable"]
        assert stages[name]["optim"]["schedule"] == "constant"
        assert name == "motion" or stages[name]["stop_at_loss"] is not None


def test_default_recipe_goes_through_listing_grounding_and_motion_to_stage2(tmp_path):
    stages = configs(tmp_path)
    assert list(stages) == ["stage1", "stage1_5", "listing", "grounding", "motion", "stage2"]
    assert starts(stages) == {"stage1": None, "stage1_5": "stage1", "listing": "stage1_5", "grounding": "listing",
                              "motion": "grounding", "stage2": "motion"}
    assert stages["listing"]["data"]["sources"] == [{"path": str(tmp_path / "world" / "stage15_listing.jsonl"),
                                                     "image_folder": str(tmp_path / "world")}]
    assert stages["grounding"]["data"]["sources"] == [{"path": str(tmp_path / "out" / "configs" / GROUNDING_MIXTURE)}]
    drill_checks(stages, ["listing", "grounding", "motion"])


@pytest.mark.parametrize("motion_drill", [True, False])
def test_position_drill_adds_place_then_relation_after_grounding(tmp_path, motion_drill):
    stages = configs(tmp_path, motion_drill=motion_drill, position_drill=True)
    motion = ["motion"] if motion_drill else []
    assert list(stages) == ["stage1", "stage1_5", "listing", "grounding", "place", "relation", *motion, "stage2"]
    assert {name: start for name, start in starts(stages).items() if name in ("place", "relation")} == {
        "place": "grounding", "relation": "place"}
    assert starts(stages)[(motion or ["stage2"])[0]] == "relation"
    assert stages["place"]["data"]["sources"] == [{"path": str(tmp_path / "world" / "stage15_place.jsonl"),
                                                   "image_folder": str(tmp_path / "world")}]
    assert stages["relation"]["data"]["sources"] == [{"path": str(tmp_path / "out" / "configs" / RELATION_MIXTURE)}]
    drill_checks(stages, ["place", "relation"])
    default = configs(tmp_path, motion_drill=motion_drill)
    assert all(stages[name] == default[name] for name in ("stage1", "stage1_5", "listing", "grounding"))
    assert stages["stage2"]["epochs"] == default["stage2"]["epochs"]


@pytest.mark.parametrize("position_drill", [False, True])
def test_motion_runs_after_the_other_drills_and_before_stage2_unless_skipped(tmp_path, position_drill):
    stages = configs(tmp_path, position_drill=position_drill)
    before = "relation" if position_drill else "grounding"
    assert list(stages)[-2:] == ["motion", "stage2"] and list(stages)[-3] == before
    assert starts(stages)["motion"] == before and starts(stages)["stage2"] == "motion"
    assert stages["motion"]["data"]["sources"] == [{"path": str(tmp_path / "out" / "configs" / MOTION_MIXTURE)}]
    # --no-motion-drill: stage-2 starts from the phase before, and the rest of the recipe is the same
    without = configs(tmp_path, motion_drill=False, position_drill=position_drill)
    assert "motion" not in without and starts(without)["stage2"] == before
    assert stages["stage2"]["epochs"] == without["stage2"]["epochs"]
    assert all(stages[name] == without[name] for name in list(without)[:-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL, progress=False)


def test_grounding_mixture_loads_every_grounding_scene_and_tiny_question_and_half_the_listings(world, tmp_path):
    path = tmp_path / GROUNDING_MIXTURE
    path.write_text(yaml.safe_dump(grounding_mixture(world, seed=0)))
    mixture = load_mixture(path)
    scenes, tiny = 10 * SMALL.train_per_task, SMALL.train_per_task
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_grounding", scenes, scenes), ("stage15_tiny", tiny, tiny), ("stage15_listing", scenes, scenes // 2)]
    images = {Path(e.image_folder) / e.record["image"] for e in mixture.entries}
    assert len(images) == scenes + tiny + scenes // 2 and all(path.is_file() for path in images)


def test_relation_mixture_loads_every_relation_scene_and_half_the_place_and_grounding_scenes(world, tmp_path):
    path = tmp_path / RELATION_MIXTURE
    path.write_text(yaml.safe_dump(relation_mixture(world, seed=0)))
    mixture = load_mixture(path)
    scenes, grounding = SMALL.position_drill, 10 * SMALL.train_per_task
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_relation", scenes, scenes), ("stage15_place", scenes, scenes // 2),
        ("stage15_grounding", grounding, grounding // 2)]
    images = {Path(e.image_folder) / e.record["image"] for e in mixture.entries}
    assert len(images) == scenes + scenes // 2 + grounding // 2 and all(path.is_file() for path in images)


def test_motion_mixture_loads_every_clip_a_third_of_the_grounding_and_listing_scenes_half_the_tiny(world, tmp_path):
    path = tmp_path / MOTION_MIXTURE
    path.write_text(yaml.safe_dump(motion_mixture(world, seed=0)))
    mixture = load_mixture(path)
    clips, scenes, tiny = SMALL.motion_drill, 10 * SMALL.train_per_task, SMALL.train_per_task
    third = -(-scenes * 33 // 100)
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_motion", clips, clips), ("stage15_grounding", scenes, third), ("stage15_listing", scenes, third),
        ("stage15_tiny", tiny, tiny // 2)]
    videos = [Path(e.video_folder) / e.record["video"] for e in mixture.entries if "video" in e.record]
    assert len(videos) == clips and all(path.is_file() for path in videos)
