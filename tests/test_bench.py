"""The benchmarks run end to end at toy sizes and write their JSON; the MFU arithmetic."""

from __future__ import annotations

import json
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
                           "--image-size", "40x50", "--ttft-image", "90x120", "--levers", "static",
                           "--out", str(out)]) == 0
    rows = _results(out)["results"]["rows"]
    decode = [r for r in rows if not r["contender"].startswith("TTFT")]
    assert {r["contender"] for r in decode} == {"transformers generate", "ours generate", "ours serving",
                                                "ours static cache"}
    assert all(r["rows differing"] == 0 and r["decode tok/s"] > 0 for r in decode)


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
