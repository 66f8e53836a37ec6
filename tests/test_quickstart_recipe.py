"""The quickstart's stage configs as data: which stage starts from which, and the opt-in motion drill
whose mixture must load against a real generated world. No training here (test_quickstart runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llavakit.data.mixture import load_mixture
from llavakit.quickstart.run import MOTION_MIXTURE, motion_mixture, stage_configs
from llavakit.synth import WorldSettings, generate_world

SMALL = WorldSettings(stage1_captions=8, train_per_task=12, eval_per_task=4, motion_drill=20)


def configs(tmp_path: Path, motion_drill: bool) -> dict:
    return stage_configs(tmp_path / "out", tmp_path / "world", tmp_path / "vision", tmp_path / "llm", 1.0, 0,
                         None, True, motion_drill=motion_drill)


def starts(stages: dict) -> dict:
    return {name: Path(c["model"]["checkpoint"]).parent.name if "checkpoint" in c["model"] else None
            for name, c in stages.items()}


def test_default_recipe_goes_from_grounding_to_stage2(tmp_path):
    stages = configs(tmp_path, motion_drill=False)
    assert list(stages) == ["stage1", "stage1_5", "grounding", "stage2"]
    assert starts(stages) == {"stage1": None, "stage1_5": "stage1", "grounding": "stage1_5", "stage2": "grounding"}


def test_motion_drill_runs_between_grounding_and_stage2_on_its_mixture(tmp_path):
    stages = configs(tmp_path, motion_drill=True)
    assert list(stages) == ["stage1", "stage1_5", "grounding", "motion", "stage2"]
    assert starts(stages) == {"stage1": None, "stage1_5": "stage1", "grounding": "stage1_5", "motion": "grounding",
                              "stage2": "motion"}
    motion = stages["motion"]
    assert motion["data"]["sources"] == [{"path": str(tmp_path / "out" / "configs" / MOTION_MIXTURE)}]
    assert motion["optim"]["schedule"] == "constant"
    assert {"pattern": r"^vision_tower\.", "frozen": True} in motion["trainable"]
    # the rest of the recipe is the default one
    default = configs(tmp_path, motion_drill=False)
    assert stages["stage2"]["epochs"] == default["stage2"]["epochs"]
    assert stages["grounding"] == default["grounding"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL, progress=False)


def test_motion_mixture_loads_every_clip_and_a_third_of_the_grounding_scenes(world, tmp_path):
    path = tmp_path / MOTION_MIXTURE
    path.write_text(yaml.safe_dump(motion_mixture(world, seed=0)))
    mixture = load_mixture(path)
    clips, scenes = SMALL.motion_drill, 10 * SMALL.train_per_task
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("stage15_motion", clips, clips), ("stage15_grounding", scenes, -(-scenes * 33 // 100))]
    videos = [Path(e.video_folder) / e.record["video"] for e in mixture.entries if "video" in e.record]
    assert len(videos) == clips and all(path.is_file() for path in videos)
