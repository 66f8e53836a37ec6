"""``llavakit recaption``: a tiny llavakit model re-captions generated scenes (batched, resumable), and
the output trains through ``llavakit train`` as stage-1.5 data.

These tests use a tiny random checkpoint, whose captions are noise, with --keep-truncated (they
never reach EOS). tests/test_quickstart.py re-captions scenes with the trained quickstart model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llavakit.cli import main
from llavakit.datagen.recaption import RECAP_PROMPT
from llavakit.synth import render_random_scene


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    (folder / "b").mkdir()
    for seed in range(6):
        render_random_scene(seed=seed).image.save(folder / ("b" if seed % 2 else "") / f"scene_{seed}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def recaption_args(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["recaption", "--model", str(model), "--images", str(images), "--out", str(out), "--batch-size", "4",
            "--max-new-tokens", "6", "--keep-truncated", "--quiet", *extra]


def test_recaption_writes_stage_1_5_data_and_resumes(onevision_dir, scenes, tmp_path, capsys):
    out = tmp_path / "recap.jsonl"
    assert main(recaption_args(onevision_dir, scenes, out)) == 0
    records = lines(out)
    assert [r["id"] for r in records] == ["b/scene_1.png", "b/scene_3.png", "b/scene_5.png", "scene_0.png",
                                          "scene_2.png", "scene_4.png"]
    assert all(r["image"] == r["id"] for r in records)
    assert {r["conversations"][0]["value"] for r in records} == {f"<image>\n{RECAP_PROMPT}"}
    assert all(r["conversations"][1]["value"] for r in records)
    [reject] = lines(tmp_path / "recap.rejects.jsonl")
    assert reject["id"] == "broken.png" and "not a readable image" in reject["reason"]
    assert "7 images: 0 done before, 6 captioned (6 truncated, kept), 1 rejected" in capsys.readouterr().out

    finished = out.read_bytes()
    assert main(recaption_args(onevision_dir, scenes, out)) == 0  # nothing left to do
    assert out.read_bytes() == finished and "7 images: 7 done before, 0 captioned" in capsys.readouterr().out

    kept = b"".join(finished.splitlines(keepends=True)[:2])
    out.write_bytes(kept + b'{"id": "b/scene_5.png", "ima')  # killed while writing the third record
    assert main(recaption_args(onevision_dir, scenes, out)) == 0
    assert out.read_bytes() == finished  # the same file, no duplicate (greedy; rows do not depend on batching)


@pytest.mark.parametrize("listing", ["list.txt", "llava.jsonl"])
def test_lists_and_truncated_captions_rejected_by_default(onevision_dir, scenes, tmp_path, listing):
    out = tmp_path / "recap.jsonl"
    listing = tmp_path / listing
    if listing.suffix == ".txt":
        listing.write_text("# two scenes\nscene_0.png\n\nb/scene_1.png\n")
    else:  # re-caption the images of a LLaVA file (e.g. LCS-558K), its ids kept
        rows = [{"id": name, "image": name, "conversations": []} for name in ("scene_0.png", "b/scene_1.png")]
        listing.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"id": "text only", "conversations": []}]))
    args = [a for a in recaption_args(onevision_dir, listing, out, "--image-folder", str(scenes))
            if a != "--keep-truncated"]
    assert main(args) == 0
    assert out.read_text() == ""
    rejects = lines(tmp_path / "recap.rejects.jsonl")
    assert [(r["id"], r["reason"]) for r in rejects] == [
        ("scene_0.png", "truncated at max_new_tokens=6"), ("b/scene_1.png", "truncated at max_new_tokens=6")]
    assert all(r["caption"] for r in rejects)  # the cut caption is kept in the rejects, for inspection


@pytest.mark.slow
def test_recaptioned_scenes_train_as_stage_1_5(onevision_dir, scenes, tmp_path):
    out = tmp_path / "recap.jsonl"
    assert main(recaption_args(onevision_dir, scenes, out)) == 0
    config = {"stage": "stage1.5", "model": {"checkpoint": str(onevision_dir)},
              "data": {"sources": [{"path": str(out), "image_folder": str(scenes)}]},
              "output_dir": str(tmp_path / "run"), "micro_batch_size": 2, "global_batch_size": 2, "max_steps": 2,
              "tensorboard": False, "optim": {"warmup_ratio": 0.0}}
    (tmp_path / "stage1_5.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "stage1_5.yaml")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stage"] == "stage1.5" and summary["steps"] == 2 and summary["skipped"] == 0
    assert (tmp_path / "run" / "model").is_dir()
