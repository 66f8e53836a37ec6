"""Evaluation tasks carry a version, bumped whenever what they ask or how they score changes
(docs/evaluation.md). For the synthetic world's tasks the test below pins a hash of each task's
question phrasings (synth/questions.py) and metric to its version: a change of wording or metric
without a bump fails it."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
import yaml

from llavakit.evaluation.task_spec import builtin_task_names, load_task
from llavakit.synth import EVAL_TASK_NAMES
from llavakit.synth.questions import PHRASINGS, TASK_PHRASINGS

# task: (version, hash of its phrasings and metric). On a deliberate change: bump the task's
# `version` in evaluation/tasks/synth_<task>.yaml, then put the new version and hash here.
PINNED = {
    "color": (1, "fea024fc5259f394"),
    "shape": (1, "72f0c3c5f7825b62"),
    "count": (1, "df6b3f489e11df1d"),
    "position": (1, "d4096eb85e7b1e10"),
    "hires_detail": (1, "af660f029147e9cd"),
    "spot_difference": (1, "902cde2fcde713eb"),
    "which_image": (1, "3d9c2188eeb6ed9e"),
    "multiview": (1, "6de65459a24cf88f"),
    "video_direction": (1, "71d1d9215eb9187d"),
}


def asked_and_scored(task: str) -> str:
    """A hash of what the synth task asks (every phrasing of its question kinds) and its metric."""
    payload = {"phrasings": {kind: PHRASINGS[kind] for kind in TASK_PHRASINGS[task]},
               "metric": load_task(f"synth_{task}").metric}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_every_shipped_synth_task_file_states_its_version():
    folder = resources.files("llavakit.evaluation") / "tasks"
    synth = [name for name in builtin_task_names() if name.startswith("synth_")]
    assert sorted(synth) == sorted(f"synth_{task}" for task in EVAL_TASK_NAMES)
    for name in synth:
        data = yaml.safe_load((folder / f"{name}.yaml").read_text(encoding="utf-8"))
        assert isinstance(data.get("version"), int) and data["version"] >= 1, f"{name}.yaml: no version"


@pytest.mark.parametrize("task", EVAL_TASK_NAMES)
def test_a_change_of_wording_or_metric_bumps_the_task_version(task):
    version = load_task(f"synth_{task}").version
    pinned_version, pinned_hash = PINNED[task]
    now = asked_and_scored(task)
    if now != pinned_hash:
        assert version > pinned_version, (
            f"synth_{task}: its questions' wording (synth/questions.py) or its metric changed: bump `version` in "
            f"evaluation/tasks/synth_{task}.yaml (now {version}) and pin ({version + 1}, {now!r}) in {__file__}")
        pytest.fail(f"synth_{task}: version bumped to {version}: pin ({version}, {now!r}) in PINNED of {__file__}")
    assert version == pinned_version, f"synth_{task}: version {version} but PINNED says {pinned_version}"
