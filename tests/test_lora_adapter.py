"""LoRA runs save a peft adapter: peft loads it onto the base and computes what the run's merged
model computes; `merge-lora`, `load(base, adapter=...)` and `serve --adapter` rebuild that model.
Also `llavakit --version` and a served model's default name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import httpx
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import llavakit
from llavakit.checkpoint import adapter
from llavakit.checkpoint.io import checkpoint_name
from llavakit.cli import main
from llavakit.errors import CheckpointError
from llavakit.serving.background import ServerProcess
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer
from train_fixtures import base_config, write_caption_data

FROZEN_TOWER = {"pattern": r"^vision_tower\.", "frozen": True}
LORA = {"rank": 4, "alpha": 8, "lr": 2e-2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_caption_data(tmp_path_factory.mktemp("data"), count=8)


def _run(data, onevision_dir, out, rules, **lora):
    trainer = Trainer(build_config(base_config(data, out, model={"checkpoint": str(onevision_dir)},
                                               trainable=rules, lora={**LORA, **lora})))
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def lora_only_run(data, onevision_dir, tmp_path_factory):
    """Only the adapters train (projector and newline frozen): peft alone rebuilds the model."""
    out = tmp_path_factory.mktemp("runs") / "lora-only"
    frozen_connector = {"pattern": r"^(multi_modal_projector|image_newline)", "frozen": True}
    _run(data, onevision_dir, out, [FROZEN_TOWER, frozen_connector])
    return out


@pytest.fixture(scope="module")
def lora_projector_run(data, onevision_dir, tmp_path_factory):
    """Adapters and the projector train: the projector travels beside the adapter."""
    out = tmp_path_factory.mktemp("runs") / "lora-projector"
    _run(data, onevision_dir, out, [FROZEN_TOWER, {"pattern": ".", "lr": 1e-2}])
    return out


def _conversation(data):
    return [{"role": "user", "content": [{"type": "image", "image": str(data.parent / "images" / "3.png")},
                                         {"type": "text", "text": "What colour is the picture?"}]}]


def _logits(llava, inputs):
    with torch.no_grad():
        return llava.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits


def _assert_same_weights(got: dict, expected: dict, atol: float = 0.0):
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.allclose(got[key], tensor, rtol=0, atol=atol), key


def test_peft_loads_the_adapter_on_the_base_with_the_merged_models_logits(lora_only_run, onevision_dir, data):
    from peft import PeftModel, get_peft_model_state_dict

    directory = lora_only_run / "adapter"
    assert (directory / "adapter_config.json").is_file() and (directory / "adapter_model.safetensors").is_file()
    assert not (directory / adapter.NON_LORA_NAME).exists()  # nothing outside the LLM trained
    merged = llavakit.load(lora_only_run / "model")
    base = llavakit.load(onevision_dir)
    inputs = merged.prepare([_conversation(data)])
    before = _logits(base, inputs)

    base.model.language_model = PeftModel.from_pretrained(base.model.language_model, str(directory))
    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as handle:  # peft's own keys
        assert set(handle.keys()) == set(get_peft_model_state_dict(base.model.language_model))
    with_adapter = _logits(base, inputs)
    expected = _logits(merged, inputs)
    assert (with_adapter - before).abs().max() > 1e-3  # the adapter changes the model
    assert torch.allclose(with_adapter, expected, rtol=0, atol=1e-5)


def test_merge_lora_and_load_with_adapter_equal_the_runs_merged_model(lora_projector_run, onevision_dir, tmp_path):
    directory = lora_projector_run / "adapter"
    with safe_open(str(directory / adapter.NON_LORA_NAME), "pt") as handle:
        assert set(handle.keys()) == {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                                      "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias",
                                      "image_newline"}
    run_model = llavakit.load(lora_projector_run / "model").model.state_dict()
    base = llavakit.load(onevision_dir).model.state_dict()
    assert not torch.equal(run_model["multi_modal_projector.linear_1.weight"],
                           base["multi_modal_projector.linear_1.weight"])

    assert main(["merge-lora", "--base", str(onevision_dir), "--adapter", str(directory),
                 "--out", str(tmp_path / "merged")]) == 0
    _assert_same_weights(llavakit.load(tmp_path / "merged").model.state_dict(), run_model, atol=1e-6)
    _assert_same_weights(llavakit.load(onevision_dir, adapter=directory).model.state_dict(), run_model, atol=1e-6)


def test_save_merged_false_saves_the_adapter_only(data, onevision_dir, tmp_path):
    trainer = _run(data, onevision_dir, tmp_path / "run", [FROZEN_TOWER, {"pattern": ".", "lr": 1e-2}],
                   save_merged=False)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["adapter"] == str(run / "adapter") and "model" not in summary
    assert not (run / "model").exists() and not (run / "checkpoints" / "step-00000003" / "model").exists()
    assert (run / "checkpoints" / "step-00000003" / "adapter" / "adapter_config.json").is_file()
    in_memory = adapter.merged(trainer.unwrapped()).state_dict()
    _assert_same_weights(llavakit.load(onevision_dir, adapter=run / "adapter").model.state_dict(), in_memory, 1e-6)
    # weights gathered from shards (FSDP) merge the same way as the model's own
    gathered = adapter.merged(trainer.unwrapped(), trainer.unwrapped().state_dict()).state_dict()
    _assert_same_weights(gathered, in_memory)


def test_an_adapter_that_is_not_one_or_does_not_fit_is_named(lora_only_run, onevision_dir, next_dir):
    with pytest.raises(CheckpointError, match=r"adapter .*lora-only/model: no adapter_config.json"):
        llavakit.load(onevision_dir, adapter=lora_only_run / "model")
    with pytest.raises(CheckpointError, match=r"adapter .*missing: no such directory"):
        llavakit.load(onevision_dir, adapter=lora_only_run / "missing")
    with pytest.raises(CheckpointError, match=r"adapter .*lora-only/adapter: does not fit the base model's LLM: "
                                              r"size mismatch for base_model\.model\.model\.layers\.0\.") as caught:
        llavakit.load(next_dir, adapter=lora_only_run / "adapter")
    assert "\n" not in str(caught.value)


def test_serve_with_adapter_answers_as_the_merged_model_under_the_runs_name(lora_only_run, onevision_dir):
    conversation = [{"role": "user", "content": "Say something."}]
    expected = llavakit.load(lora_only_run / "model").generate(conversation, max_new_tokens=6).text
    with ServerProcess(onevision_dir, "--adapter", str(lora_only_run / "adapter"), "--threads", "1",
                       "--log-level", "warning") as server:
        models = httpx.get(server.url + "/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["lora-only"]
        answer = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": "lora-only", "messages": conversation, "max_tokens": 6, "temperature": 0}).json()
    assert answer["choices"][0]["message"]["content"] == expected


def test_a_checkpoints_name_is_its_folder_or_its_runs(tmp_path):
    (tmp_path / "runs" / "stage2" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "stage2" / "adapter").mkdir()
    (tmp_path / "tiny-ov").mkdir()
    assert checkpoint_name(tmp_path / "runs" / "stage2" / "model") == "stage2"
    assert checkpoint_name(str(tmp_path / "runs" / "stage2" / "model") + "/") == "stage2"
    assert checkpoint_name(tmp_path / "runs" / "stage2" / "adapter") == "stage2"
    assert checkpoint_name(tmp_path / "tiny-ov") == "tiny-ov"
    assert checkpoint_name("llava-hf/llava-onevision-qwen2-0.5b-ov-hf") == "llava-onevision-qwen2-0.5b-ov-hf"


def test_version_prints_the_installed_version():
    done = subprocess.run([sys.executable, "-m", "llavakit", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"llavakit {version('llavakit')}\n"


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_saves_the_adapter_and_merged_model_of_one_process(data, onevision_dir, tmp_path):
    """FSDP gathers the weights from shards: adapter and merged model come from them (a deep copy of
    a sharded model is refused), equal to one process's with the same global batch."""
    runs = {}
    for name, launcher, overrides in (
        ("fsdp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
         {"distributed": "fsdp", "micro_batch_size": 2}),
        ("single", [], {"micro_batch_size": 4}),
    ):
        config = base_config(data, tmp_path / name, model={"checkpoint": str(onevision_dir)}, lora=LORA,
                             trainable=[FROZEN_TOWER, {"pattern": ".", "lr": 1e-2}], **overrides)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        done = subprocess.run([sys.executable, *launcher, "-m", "llavakit", "train", str(tmp_path / f"{name}.yaml")],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[name] = tmp_path / name
    for file in ("adapter_model.safetensors", adapter.NON_LORA_NAME):
        sharded, single = (load_file(str(runs[n] / "adapter" / file)) for n in ("fsdp", "single"))
        _assert_same_weights(sharded, single, atol=1e-5)
    merged = llavakit.load(runs["fsdp"] / "model").model.state_dict()
    _assert_same_weights(merged, llavakit.load(runs["single"] / "model").model.state_dict(), atol=1e-5)
    _assert_same_weights(llavakit.load(onevision_dir, adapter=runs["fsdp"] / "adapter").model.state_dict(), merged,
                         atol=1e-6)
