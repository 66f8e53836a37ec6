"""Experiment tracking: metrics.jsonl always, TensorBoard by default, W&B on request (read back from
the offline run's own files), learning rates under the names of the parts they train."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from train_fixtures import base_config, write_caption_data

from llavakit.train import params
from llavakit.train.config import ParamRule, build_config
from llavakit.train.loop import Trainer
from llavakit.train.telemetry import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=8)


def _train(data: Path, run: Path, checkpoint: Path, **overrides) -> list[dict]:
    config = base_config(data, run, model={"checkpoint": str(checkpoint)}, max_steps=2,
                         optim={"warmup_ratio": 0.0, "schedule": "constant"}, **overrides)
    config.pop("tensorboard")
    Trainer(build_config(config)).run()
    return read_metrics(run / "metrics.jsonl")


def _wandb_records(run_file: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): a 7-byte W&B header, then
    LevelDB log records (32 KiB blocks of [crc:4][length:2][type:1][data], the header counted in the
    first block) holding wandb's own protobuf `Record` messages."""
    from wandb.proto.wandb_internal_pb2 import Record

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(raw):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = struct.unpack("<HB", raw[offset + 4:offset + 7])
        chunk = raw[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_file: Path, timeout: float = 60.0) -> list[dict]:
    """The history rows of a finished offline run. wandb's service process writes the file and may
    still be flushing when ``run.finish()`` returns: wait for the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{run_file}: no exit record within {timeout} s"
        time.sleep(0.1)
    return [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_learning_rates_are_named_by_part(onevision_dir):
    import llavakit

    model = llavakit.load(onevision_dir).model
    rules = [ParamRule(pattern=r"^vision_tower\.", lr=2e-6), ParamRule(pattern=r"^language_model\..*layers\.0\.",
                                                                      lr=3e-5), ParamRule(pattern=".", lr=1e-5)]
    groups = params.param_groups(model, params.assign(model, rules, 1e-5, 0.1))
    names = {(g["name"], g["lr"]) for g in groups}
    # the LLM's second learning rate (in the order its parameters come: embeddings, then layer 0) is llm-2
    assert names == {("vision", 2e-6), ("projector", 1e-5), ("llm", 1e-5), ("llm-2", 3e-5)}
    for group in groups:  # a group trains one part only
        assert {params.part_name(n) for n in group["names"]} == {group["name"].split("-")[0]}
    # biases and vectors are not decayed: their groups share the name of their part's decayed group
    assert len(groups) > len(names)
    assert params.learning_rates(groups) == {"lr/vision": 2e-6, "lr/projector": 1e-5, "lr/llm": 1e-5,
                                             "lr/llm-2": 3e-5}


def test_default_logs_jsonl_and_tensorboard_with_part_names(data, onevision_dir, tmp_path):
    run = tmp_path / "run"
    records = _train(data, run, onevision_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert {k for k in records[0] if k.startswith("lr/")} == {"lr/vision", "lr/projector", "lr/llm"}
    assert records[0]["lr/vision"] == pytest.approx(2e-6) and records[0]["lr/llm"] == pytest.approx(1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss", "lr/vision", "lr/projector", "lr/llm"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in records])


def test_wandb_offline_run_holds_the_logged_metrics(data, onevision_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    run = tmp_path / "run"
    records = _train(data, run, onevision_dir, report_to=["wandb"], wandb={"project": "llavakit-test"})
    assert not (run / "tensorboard").exists()  # only what report_to names (and metrics.jsonl, always)
    assert [r["step"] for r in records] == [1, 2]
    run_files = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    run_id = (run / "wandb-run-id").read_text().strip()
    assert run_files[0].name == f"run-{run_id}.wandb"
    history = wandb_history(run_files[0])
    assert [row["_step"] for row in history] == [1, 2]
    for row, record in zip(history, records):
        assert row["loss"] == pytest.approx(record["loss"])
        assert row["lr/llm"] == pytest.approx(record["lr/llm"]) and "lr/0" not in row
        assert row["tokens"] == record["tokens"]


def test_report_to_is_checked_and_jsonl_is_always_on(tmp_path):
    config = base_config(tmp_path / "d.jsonl", tmp_path / "run", model={"checkpoint": "x"}, report_to=["wandb"])
    assert build_config(config).report_to == ["wandb", "jsonl"]  # tensorboard: false in the fixture
    from llavakit.train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="report_to"):
        build_config({**config, "report_to": ["mlflow"]})


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    from llavakit.train.config import WandbSettings
    from llavakit.train.tracking import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    first = WandbTracker(WandbSettings(), run, {"seed": 0}, resume=False)
    first.log({"loss": 2.0}, 1)
    first.close()
    again = WandbTracker(WandbSettings(), run, {"seed": 0}, resume=True)
    again.log({"loss": 1.0}, 2)
    again.close()
    fresh = WandbTracker(WandbSettings(), run, {"seed": 0}, resume=False)
    fresh.close()
    assert again.run.id == first.run.id != fresh.run.id
    assert first.run.name == "run"  # the output folder's name
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))  # RUN/wandb without WANDB_DIR
    assert {f.name for f in files} == {f"run-{first.run.id}.wandb", f"run-{fresh.run.id}.wandb"}
    history = [row for f in files if f.name == f"run-{first.run.id}.wandb" for row in wandb_history(f)]
    assert sorted((row["_step"], row["loss"]) for row in history) == [(1, 2.0), (2, 1.0)]
