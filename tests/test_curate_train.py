"""The balanced subset of a LLaVA pool trains as stage-1 data through `llavakit train`."""

from __future__ import annotations

import json

from PIL import Image

from llavakit.cli import main
from llavakit.tiny import checkpoints
from llavakit.train.config import build_config
from llavakit.train.loop import Trainer


def test_balanced_output_loads_as_stage1_data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(60):  # "red" dominates the pool; rare colours appear a few times
        colour = "red" if i % 6 else ["blue", "green", "gold"][i // 6 % 3]
        Image.new("RGB", (32 + i, 40), (200, 40, 40)).save(images / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a {colour} square"}]})
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    words = tmp_path / "words.txt"
    words.write_text("red\nblue\ngreen\ngold\nsquare\n")
    meta, counts, balanced = tmp_path / "meta.json", tmp_path / "counts.json", tmp_path / "balanced.jsonl"
    assert main(["curate", "metadata", "--words", str(words), "-o", str(meta)]) == 0
    assert main(["curate", "match", str(pool), "--metadata", str(meta), "-o", str(counts)]) == 0
    assert main(["curate", "balance", str(pool), "--metadata", str(meta), "--counts", str(counts),
                 "-t", "8", "-o", str(balanced), "--seed", "1"]) == 0
    kept = [json.loads(line) for line in balanced.read_text().splitlines()]
    assert 8 <= len(kept) < len(rows)
    assert {"blue", "green", "gold"} <= {r["conversations"][1]["value"].split()[1] for r in kept}

    vision, llm = checkpoints.build_parts(tmp_path / "parts")
    config = build_config({
        "stage": "stage1",
        "model": {"build": {"vision": {"pretrained": str(vision)}, "llm": {"pretrained": str(llm)}}},
        "data": {"sources": [{"path": str(balanced), "image_folder": str(images)}]},
        "output_dir": str(tmp_path / "run"), "micro_batch_size": 4, "global_batch_size": 8, "max_steps": 2,
        "tensorboard": False,
    })
    summary = Trainer(config).run()
    assert summary["steps"] == 2 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
