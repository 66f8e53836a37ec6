"""The benchmarks run end to end at toy sizes and write their JSON; the MFU arithmetic; bench/gpu.sh's
plan and its --dry-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import common


def test_mfu_counts_trained_frozen_through_and_frozen_parts():
    parts = [common.Component("vision", 10.0, common.FROZEN), common.Component("projector", 1.0, common.TRAINED),
             common.Component("llm", 100.0, common.FROZEN_GRAD)]
    assert common.step_flops(parts) == 10 + 3 + 200
    assert common.mfu(parts, step_seconds=2.0, peak=213e-12) == pytest.approx(0.5)
    assert common.mfu(parts, 1.0, None) is None


def test_transformer_flops_follow_the_palm_convention():
    # 6N + 12 L d T per trained token (3 x forward); causal halves the attention term
    forward = common.transformer_forward_flops(1000, tokens_per_sequence=8, sequences=2, layers=3, attention_width=4)
    assert forward == 2 * 1000 * 16 + 4 * 3 * 8 * 4 * 16
    causal = common.transformer_forward_flops(1000, 8, 2, 3, 4, causal=True)
    assert causal == 2 * 1000 * 16 + 2 * 3 * 8 * 4 * 16


def test_peak_lookup_and_table():
    assert common.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert common.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert common.peak_tflops("AMD EPYC") is None
    text = common.table([{"a": 1.23456, "b": None, "c": True}])
    assert text.splitlines()[2] == "| 1.23 | - | yes |"


def _results(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert {"date", "git", "device", "cpu"} <= set(data["environment"])
    return data


def test_preprocess_benchmark_small(tmp_path):
    import preprocess

    out = tmp_path / "pre.json"
    assert preprocess.main(["--photos", "1", "--documents", "0", "--tiny", "2", "--repeats", "1", "--threads", "2",
                            "--out", str(out)]) == 0
    rows = _results(out)["results"]["rows"]
    assert {r["images"] for r in rows} == {"photo 1920x1080", "tiny <=64 px"}
    assert all(r["identical to PIL"] and r["ours img/s"] > 0 for r in rows)


def test_inference_benchmark_tiny_tokens_equal_transformers(tmp_path):
    import inference

    out = tmp_path / "inf.json"
    assert inference.main(["--shape", "tiny", "--batches", "1,3", "--new-tokens", "4", "--repeats", "1",
                           "--image-size", "40x50", "--ttft-image", "90x120",
                           "--out", str(out)]) == 0
    rows = _results(out)["results"]["rows"]
    decode = [r for r in rows if not r["contender"].startswith("TTFT")]
    assert {r["contender"] for r in decode} == {"transformers generate", "ours engine"}
    assert all(r["rows differing"] == 0 and r["decode tok/s"] > 0 for r in decode)


ENGINE_SMALL = ["--shape", "tiny", "--device", "cpu", "--repeats", "1"]


def test_engine_benchmark_decode_and_chat_tiny(tmp_path):
    import engine

    out = tmp_path / "engine.json"
    assert engine.main([*ENGINE_SMALL, "--parts", "decode,chat", "--batches", "1,3",
                        "--new-tokens", "5", "--image-size", "40x50", "--chat-tokens", "3", "--out", str(out)]) == 0
    tables = _results(out)["results"]["tables"]
    decode, chat = tables["decode"], tables["chat"]
    assert {r["batch"] for r in decode} == {1, 3}
    assert [r["contender"] for r in decode if r["batch"] == 1] == ["transformers generate", "engine eager",
                                                                   "engine compiled"]
    assert all(r["rows differing"] == 0 for r in decode)
    # at toy sizes timing noise can exceed a decode step: then the row says so instead of a figure
    assert all((r["decode ms/step"] or 0) > 0 or "noise" in r["note"] for r in decode)
    assert [r["contender"] for r in chat] == ["no media cache", "media cache"]
    assert chat[1]["cache hits"] == 4 and chat[1]["cache misses"] == 1  # turns 2-5 reuse turn 1's image
    assert chat[1]["pixel hits"] == 4 and chat[1]["pixel misses"] == 1  # and its file is decoded once


def test_engine_benchmark_load_modes_are_serve_options():
    """The load part's servers (the slow test runs them): continuous, static batcher, one at a time."""
    import argparse

    import engine
    from llavakit.serving import server_cli

    parser = argparse.ArgumentParser()
    server_cli.add_arguments(parser)
    modes = {mode: parser.parse_args(["--model", "m", *flags]) for mode, flags in engine.load_modes(4).items()}
    assert {mode: (args.schedule, args.max_batch_size) for mode, args in modes.items()} == {
        "engine continuous": ("continuous", 4), "static batcher": ("static", 4), "one at a time": ("continuous", 1)}


@pytest.mark.slow
def test_engine_benchmark_load_tiny(tmp_path):
    import engine

    out = tmp_path / "engine.json"
    assert engine.main([*ENGINE_SMALL, "--parts", "load", "--clients", "4", "--load-requests", "8",
                        "--short-tokens", "3", "--out", str(out)]) == 0
    rows = _results(out)["results"]["tables"]["load"]
    assert [r["mode"] for r in rows] == ["engine continuous", "static batcher", "one at a time"]
    assert all(r["errors"] == 0 and r["requests"] == 8 and r["tok/s"] > 0 for r in rows)
    assert all(r["answers as first mode"] == 8 for r in rows)  # greedy answers do not depend on the schedule


def test_train_benchmark_tiny(tmp_path):
    import train

    out = tmp_path / "train.json"
    assert train.main(["--shape", "tiny", "--batch", "2", "--seq", "160", "--steps", "2", "--warmup", "0",
                       "--levers", "packing,fused_ce", "--out", str(out)]) == 0
    data = _results(out)
    rows = data["results"]["rows"]
    assert [r["contender"] for r in rows] == ["transformers", "ours", "ours+packing", "ours+fused_ce", "ours+all"]
    assert all(r["tokens/s"] and r["tokens/s"] > 0 for r in rows)
    assert data["settings"]["first_loss_ours"] == pytest.approx(data["settings"]["first_loss_transformers"], abs=1e-4)


def test_data_cache_benchmark_small(tmp_path):
    import data_cache

    out = tmp_path / "cache.json"
    assert data_cache.main(["--train-per-task", "3", "--epochs", "2", "--threads", "1", "--out", str(out)]) == 0
    rows = _results(out)["results"]["rows"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["identical"] for r in rows)
    assert rows[1]["cache hits"] > rows[0]["cache hits"]  # the second epoch reads what the first decoded


def test_train_workers_benchmark_small(tmp_path, onevision_dir):
    import train_workers
    import yaml
    from train_fixtures import base_config, write_caption_data

    data = write_caption_data(tmp_path / "data", count=8)
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump(base_config(data, tmp_path / "run", model={"checkpoint": str(onevision_dir)})))
    out = tmp_path / "workers.json"
    assert train_workers.main(["--config", str(config), "--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    results = _results(out)["results"]
    assert set(results) == {"0", "1"} and all(r[0]["loop_s"] > 0 for r in results.values())


def test_data_scale_benchmark_small(tmp_path):
    import data_scale

    out = tmp_path / "scale.json"
    assert data_scale.main(["--samples", "300", "--pool", "5", "--shard-rows", "40", "--global-batch", "16",
                            "--micro-batch", "2", "--world-size", "2", "--work", str(tmp_path / "work"),
                            "--out", str(out)]) == 0
    data = _results(out)
    rows = data["results"]["rows"]
    assert [r["contender"] for r in rows] == ["streamed", "load everything"]
    assert all(r["samples"] == 300 and r["same first batch"] and r["peak RSS MiB"] > 0 for r in rows)
    assert data["settings"]["parquet_samples"] == 90 and len(list((tmp_path / "work" / "onevision").iterdir())) == 3


GPU_SCRIPT = BENCH / "gpu.sh"
GPU_PARTS = ("setup", "train-0.5b", "train-7b-lora", "inference", "serve-model", "serve-load")


def _gpu_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("LLAVAKIT_BENCH_RESULTS", None)
    return subprocess.run(["bash", str(GPU_SCRIPT), *args, "--results", str(tmp_path / "RESULTS.md"),
                           "--out", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=900)


def test_gpu_script_plan_fits_eight_minutes(tmp_path):
    done = _gpu_script("--plan", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    budgets = {line.split()[0]: int(line.split()[1].rstrip("s")) for line in done.stdout.splitlines()[1:-1]}
    assert tuple(budgets) == GPU_PARTS
    assert sum(budgets.values()) <= 8 * 60
    assert "--shape 7b --mode lora" in done.stdout and "--batches 1,16,64" in done.stdout
    assert "--clients 64" in done.stdout and "pip install -q -e" in done.stdout
    assert not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_part_tiny_and_appends_elsewhere(tmp_path):
    results_md = BENCH / "RESULTS.md"
    before = results_md.read_text()
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\nearlier figures\n")
    done = _gpu_script("--dry-run", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert results_md.read_text() == before  # the test run leaves the real results alone
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Benchmark results\n\nearlier figures\n\n## bench/gpu.sh --dry-run")
    assert "- **Device**: CPU" in text and "- **Git**: `" in text
    assert "No figures" not in text  # every part wrote its JSON
    for part in GPU_PARTS[1:]:
        assert f"{part} 0 (" in text
    assert "| ours+fused_adamw" in text and "| ours+all" in text
    assert "one-at-a-time" in text and "TTFT ours generate" in text


def test_gpu_script_runs_the_engine_benchmark_as_its_own_selection(tmp_path):
    done = _gpu_script("--plan", "--parts", "setup,engine", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    budgets = {line.split()[0]: int(line.split()[1].rstrip("s")) for line in done.stdout.splitlines()[1:-1]}
    assert tuple(budgets) == ("setup", "engine") and sum(budgets.values()) <= 10 * 60  # one device command
    assert "bench/engine.py --shape 0.5b --device cuda --batches 1,16,64" in done.stdout
    assert "--clients 32" in done.stdout
    refused = _gpu_script("--plan", "--parts", "engine,nope", tmp_path=tmp_path)
    assert refused.returncode == 2 and "unknown part nope" in refused.stderr


def test_gpu_report_renders_each_table_of_the_engine_benchmark(tmp_path):
    import gpu_report

    (tmp_path / "status.tsv").write_text("engine\t0\t12\n")
    tables = {"decode": [{"batch": 1, "contender": "transformers generate", "decode ms/step": 2.5, "runs": {}}],
              "chat": [{"contender": "media cache", "total s": 1.25, "turn s": [0.5]}]}
    (tmp_path / "engine.json").write_text(json.dumps({"results": {"rows": [], "tables": tables}}))
    text = gpu_report.section(tmp_path, "gpu")
    assert "### Inference engine" in text and "### Training" not in text  # only the parts that ran
    assert "decode:\n\n| batch | contender" in text and "chat:\n\n| contender   | total s |" in text
    assert "| media cache | 1.25    |" in text and "turn s" not in text  # lists stay in the JSON
