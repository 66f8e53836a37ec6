"""data.num_workers: the next steps' batches built by worker processes train the same model as
batches built in the training process, a stage that stops early leaves no worker behind, and a
resumed run picks up the batches at its step."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

import llavakit
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from train_fixtures import base_config, write_caption_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=24)


def _run(data, run, onevision_dir, workers, **extra):
    config = base_config(data, run, model={"checkpoint": str(onevision_dir)}, max_steps=6, **extra)
    config["data"]["num_workers"] = workers
    return Trainer(build_config(config))


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_batches_built_by_workers_train_the_same_model(data, onevision_dir, tmp_path):
    _run(data, tmp_path / "inline", onevision_dir, 0).run()
    _run(data, tmp_path / "workers", onevision_dir, 2).run()
    assert _losses(tmp_path / "workers") == _losses(tmp_path / "inline")
    inline = llavakit.load(tmp_path / "inline" / "model").model.state_dict()
    workers = llavakit.load(tmp_path / "workers" / "model").model.state_dict()
    assert all(torch.equal(inline[name], workers[name]) for name in inline)
    assert not multiprocessing.active_children()


def test_a_stage_stopped_early_leaves_no_worker_running(data, onevision_dir, tmp_path):
    trainer = _run(data, tmp_path / "run", onevision_dir, 1,
                   stop_at_loss={"below": 100.0, "window": 2, "min_steps": 2})
    summary = trainer.run()
    assert summary["steps"] == 2 and summary["stopped_early"]
    assert not multiprocessing.active_children()


class _Killed(Exception):
    pass


def test_a_resumed_run_builds_the_batches_from_its_step(data, onevision_dir, tmp_path):
    _run(data, tmp_path / "whole", onevision_dir, 0).run()
    run = tmp_path / "resumed"
    trainer = _run(data, run, onevision_dir, 1, save={"every_steps": 3})
    train_step = trainer.train_step

    def killed_in_step_5(step, batches=None):  # after the step-3 checkpoint, with steps built ahead
        if step == 4:
            raise _Killed
        return train_step(step, batches)

    trainer.train_step = killed_in_step_5
    with pytest.raises(_Killed):
        trainer.run()
    del trainer
    _run(data, run, onevision_dir, 1, save={"every_steps": 3}).run(resume=True)
    assert _losses(run) == _losses(tmp_path / "whole")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_sample_that_breaks_in_a_worker_is_reported_as_without_workers(data, onevision_dir, tmp_path, workers):
    trainer = _run(data, tmp_path / "run", onevision_dir, workers)
    trainer.setup()  # the pre-pass reads every image's header
    images = sorted((data.parent / "images").iterdir())
    saved = {path: path.read_bytes() for path in images}
    try:
        for path in images:  # cut after the header: found only when the pixels are decoded
            path.write_bytes(saved[path][:40])
        with pytest.raises(Exception) as caught:
            trainer.run()
    finally:
        for path, content in saved.items():
            path.write_bytes(content)
    message = str(caught.value)
    assert "\n" not in message and "DataLoader" not in message
    assert any(path.name in message for path in images), message


def test_preference_pairs_built_by_workers_train_the_same_dpo_model(data, onevision_dir, tmp_path):
    """DPO builds its pair batches through the same path, so workers can build them too."""
    from test_train_lora_dpo import _pairs

    from llavakit.train.dpo import DpoTrainer

    pairs, images = _pairs(data.parent)
    records = {}
    for workers in (0, 2):
        run = tmp_path / f"workers-{workers}"
        config = build_config({
            "stage": "dpo", "model": {"checkpoint": str(onevision_dir)},
            "data": {"sources": [{"path": str(pairs), "image_folder": str(images)}], "num_workers": workers},
            "output_dir": str(run), "micro_batch_size": 2, "global_batch_size": 4, "max_steps": 4,
            "optim": {"warmup_ratio": 0.0, "lr": 5e-3, "schedule": "constant"}, "tensorboard": False,
            "trainable": [{"pattern": r"^vision_tower\.", "frozen": True}, {"pattern": ".", "lr": 5e-3}],
        })
        DpoTrainer(config).run()
        records[workers] = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s" and k != "elapsed_s"}
                            for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[2] == records[0] and "dpo/margin" in records[0][-1]
    assert not multiprocessing.active_children()
