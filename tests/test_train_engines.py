"""A launch that asked for DeepSpeed or FSDP and cannot have it is refused in one line, before training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llavakit.train.distributed import EngineError, check_engine, refuse_unrunnable, requested_engine
from train_fixtures import base_config, write_caption_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config(tmp_path_factory, onevision_dir):
    root = tmp_path_factory.mktemp("engines")
    data = write_caption_data(root / "data", count=8)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(data, root / "run", model={"checkpoint": str(onevision_dir)},
                                               max_steps=2, global_batch_size=2)))
    return path


def _train(command: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    return subprocess.run(command, env={**environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=600)


def _refused(done: subprocess.CompletedProcess, run: Path, *words: str) -> None:
    assert done.returncode != 0, done.stdout[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("llavakit train:")]
    assert len(lines) == 1 and all(word in lines[0] for word in words), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (run / "metrics.jsonl").exists()  # nothing trained


def test_requested_engine_reads_the_launcher_and_the_config():
    assert requested_engine("auto", {}) is None
    assert requested_engine("auto", {"ACCELERATE_USE_DEEPSPEED": "true"})[0] == "deepspeed"
    assert requested_engine("auto", {"ACCELERATE_USE_FSDP": "True"})[0] == "fsdp"
    assert requested_engine("auto", {"ACCELERATE_USE_FSDP": "false"}) is None
    assert requested_engine("fsdp", {}) == ("fsdp", "the training config (distributed: fsdp)")


def test_deepspeed_without_the_package_is_refused_and_fsdp_that_became_ddp_too():
    request = ("deepspeed", "the accelerate config (ACCELERATE_USE_DEEPSPEED)")
    with pytest.raises(EngineError, match="deepspeed package is not installed"):
        refuse_unrunnable(request, cuda=True, deepspeed_installed=False)
    refuse_unrunnable(request, cuda=True, deepspeed_installed=True)
    with pytest.raises(EngineError, match="asked for fsdp but the launch set up ddp"):
        check_engine(("fsdp", "the accelerate config (ACCELERATE_USE_FSDP)"), "ddp")
    check_engine(("fsdp", "x"), "fsdp")
    check_engine(None, "ddp")


def test_deepspeed_on_a_machine_without_cuda_is_refused(config):
    done = _train([sys.executable, "-m", "llavakit", "train", str(config)], ACCELERATE_USE_DEEPSPEED="true")
    _refused(done, config.parent / "run", "DeepSpeed", "no CUDA GPU")


def test_fsdp_that_accelerate_turned_into_one_plain_process_is_refused(config):
    done = _train([sys.executable, "-m", "llavakit", "train", str(config)], ACCELERATE_USE_FSDP="true")
    _refused(done, config.parent / "run", "asked for fsdp", "set up one process")


@pytest.mark.slow
@pytest.mark.parametrize("name, words", [("fsdp", ("asked for fsdp", "set up ddp")),
                                         ("deepspeed_zero2", ("DeepSpeed",))])
def test_shipped_accelerate_configs_on_cpu_processes_are_refused(config, name, words):
    """The real launcher on a machine without GPUs: accelerate sets up DDP on CPU processes for the FSDP
    config, which llavakit refuses; for DeepSpeed the launch stops before training (accelerate's launcher
    already wants the package; where it is installed, llavakit refuses the missing CUDA)."""
    done = _train([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / f"{name}.yaml"), "--num_processes", "2",
                   "-m", "llavakit", "train", str(config)])
    assert done.returncode != 0 and any(all(w in line for w in words) for line in done.stderr.splitlines()), \
        done.stderr[-3000:]
    assert not (config.parent / "run" / "metrics.jsonl").exists()


def test_shipped_accelerate_configs_leave_the_process_count_to_the_launch():
    for path in sorted((ROOT / "configs" / "accelerate").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert not {"num_processes", "num_machines", "machine_rank"} & set(config), path.name
