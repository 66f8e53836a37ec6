"""Two CPU processes (gloo, DDP) and one process with the same global batch give the same loss
curve; FSDP on two CPU processes trains and saves a loadable checkpoint, and resumes in every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import llavakit
from llavakit.tiny import checkpoints as tiny
from llavakit.train import checkpoints
from train_fixtures import base_config, write_caption_data

STEPS = 10


def _config(tmp_path: Path, data: Path, onevision_dir: Path, name: str, **overrides) -> Path:
    config = base_config(data, tmp_path / name, model={"checkpoint": str(onevision_dir)}, max_steps=STEPS,
                         global_batch_size=8, **overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _torchrun(config: Path, *extra: str) -> str:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "llavakit", "train", str(config), *extra])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=40, text_only=8)


@pytest.mark.slow
def test_ddp_two_processes_equals_one_process(data, onevision_dir, tmp_path):
    _run([sys.executable, "-m", "llavakit", "train", str(_config(tmp_path, data, onevision_dir, "single",
                                                                  micro_batch_size=4))])
    output = _torchrun(_config(tmp_path, data, onevision_dir, "ddp", micro_batch_size=2))
    assert "DistributedDataParallel" in output or "find_unused_parameters" in output  # really DDP
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == STEPS
    assert max(abs(a - b) for a, b in zip(single, ddp)) < 1e-5
    assert single[-1] != single[0]  # it trained


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_and_saves_a_loadable_model(data, onevision_dir, tmp_path):
    config = _config(tmp_path, data, onevision_dir, "fsdp", micro_batch_size=2, distributed="fsdp",
                     save={"every_steps": 5})
    _torchrun(config)
    run = tmp_path / "fsdp"
    assert list((run / "checkpoints").glob("step-*/state/__1_0.distcp"))  # each process wrote its shard
    single = tmp_path / "single_ref"
    _run([sys.executable, "-m", "llavakit", "train", str(_config(tmp_path, data, onevision_dir, "single_ref",
                                                                  micro_batch_size=4))])
    assert max(abs(a - b) for a, b in zip(_losses(run), _losses(single))) < 1e-5
    model = llavakit.load(run / "model")
    reference = llavakit.load(single / "model").model.state_dict()
    assert all((v - reference[k]).abs().max() < 1e-5 for k, v in model.model.state_dict().items())
    answer = model.generate([{"role": "user", "content": "Hello?"}], max_new_tokens=3)
    assert len(answer.token_ids) >= 1


class RunsCode:
    """Unpickled with weights_only=False, this creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2", "lora"])
def test_fsdp_resumes_in_every_stage(data, tmp_path, stage):
    """A model from parts with the default feature_layer -2: the tower's last layer gets no
    gradient. Killed after step 2 (its later checkpoint gone), the FSDP run resumes to the same
    losses and weights (under LoRA: the adapter too); a pickle in the old place of the scheduler
    state is never run."""
    from safetensors.torch import load_file

    vision, llm = tiny.build_parts(tmp_path / "parts")
    run = tmp_path / "run"
    lora = {"lora": {"rank": 4, "alpha": 8, "lr": 2e-2}} if stage == "lora" else {}
    config = base_config(data, run, stage="stage2" if stage == "lora" else stage,
                         model={"build": {"vision": {"pretrained": str(vision)}, "llm": {"pretrained": str(llm)}}},
                         max_steps=4, global_batch_size=8, micro_batch_size=2, distributed="fsdp",
                         save={"every_steps": 2, "keep_last": 2}, **lora)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    _torchrun(path)
    expected, weights = _losses(run), load_file(str(run / "model" / "model.safetensors"))
    assert len(expected) == 4
    if stage == "lora":
        adapter_weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        assert any("lora_" in k for k in adapter_weights)
    checkpoints.discard(run / "checkpoints" / "step-00000004")
    marker = tmp_path / "code-ran"
    torch.save(RunsCode(marker), run / "checkpoints" / "step-00000002" / "state" / "extra.pt")
    output = _torchrun(path, "--resume")
    assert "step-00000002 (step 2 of 4)" in output
    assert not marker.exists()
    assert max(abs(a - b) for a, b in zip(_losses(run), expected)) < 1e-6 and len(_losses(run)) == 4
    resumed = load_file(str(run / "model" / "model.safetensors"))
    assert all((resumed[k] - v).abs().max() < 1e-6 for k, v in weights.items())
    if stage == "lora":
        assert all((resumed_adapter[k] - v).abs().max() < 1e-6
                   for resumed_adapter in [load_file(str(run / "adapter" / "adapter_model.safetensors"))]
                   for k, v in adapter_weights.items())
