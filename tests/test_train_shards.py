"""Training from Parquet shards and WebDataset tars gives the losses of the same samples in LLaVA
JSONL, and a streamed run (no length pre-pass) killed mid-epoch resumes to the uninterrupted losses."""

from __future__ import annotations

import json

import pytest
import yaml

from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from shard_fixtures import parquet_shards, tar_shards
from test_train_resume import _kill_after_logged_steps, _losses, _losses_of_a_whole_run, _train
from train_fixtures import base_config, write_caption_data


@pytest.fixture(autouse=True)
def _index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVAKIT_INDEX_CACHE", str(tmp_path / "tar-index"))  # not the user's ~/.cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    jsonl = write_caption_data(root, count=12, text_only=4)
    images = root / "images"
    return jsonl, parquet_shards(jsonl, images, root / "parquet", shards=3), tar_shards(jsonl, images, root / "wds")


def _losses_of(source: dict, onevision_dir, output, data: dict | None = None) -> list[float]:
    config = base_config(output, output, model={"checkpoint": str(onevision_dir)}, max_steps=3)
    config["data"] = {"sources": [source], **(data or {})}
    Trainer(build_config(config)).run()
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("prepass", [True, False], ids=["length-prepass", "streamed"])
def test_parquet_and_webdataset_train_to_the_jsonl_losses(data, onevision_dir, tmp_path, prepass):
    jsonl, parquet, wds = data
    streamed = None if prepass else {"length_prepass": False, "group_by_length": False}
    expected = _losses_of({"path": str(jsonl), "image_folder": str(jsonl.parent / "images")}, onevision_dir,
                          tmp_path / "jsonl", streamed)
    assert len(expected) == 3
    for name, shards in (("parquet", parquet), ("wds", wds)):
        got = _losses_of({"path": str(shards)}, onevision_dir, tmp_path / name, streamed)
        assert got == pytest.approx(expected, abs=1e-6), name


STEPS = 8


def _streamed_config(tmp_path, parquet, onevision_dir, name):
    config = base_config(parquet, tmp_path / name, model={"checkpoint": str(onevision_dir)}, max_steps=STEPS,
                         save={"every_steps": 3, "keep_last": 2})
    config["data"] = {"sources": [{"path": str(parquet)}], "length_prepass": False, "group_by_length": False}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_streamed_epoch_killed_and_resumed_gives_the_uninterrupted_losses(data, onevision_dir, tmp_path):
    # 16 samples, global batch 4: 4 steps an epoch; checkpoints at steps 3 and 6 are mid-epoch
    _, parquet, _ = data
    expected = _losses_of_a_whole_run(_streamed_config(tmp_path, parquet, onevision_dir, "straight"),
                                      tmp_path / "straight")

    config = _streamed_config(tmp_path, parquet, onevision_dir, "killed")
    run = tmp_path / "killed"
    _kill_after_logged_steps(config, run, 5)

    resumed = _train(config, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    got = _losses(run)
    assert len(got) == STEPS
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-6
