"""Small real training data on disk: solid-colour images of varied sizes and their captions."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 40)}


def write_caption_data(root: Path, count: int = 32, text_only: int = 0) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = list(COLORS)[i % len(COLORS)]
        Image.new("RGB", (36 + 3 * i, 30 + 2 * (i % 7)), COLORS[name]).save(images / f"{i}.png")
        rows.append({"id": f"img{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the picture?"},
            {"from": "gpt", "value": f"It is {name}."},
        ]})
    for i in range(text_only):
        rows.append({"id": f"txt{i}", "conversations": [
            {"from": "human", "value": f"Say the number {i}."}, {"from": "gpt", "value": f"{i}"}]})
    path = root / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def base_config(data: Path, output: Path, **overrides) -> dict:
    config = {
        "stage": "stage2",
        "data": {"sources": [{"path": str(data), "image_folder": str(data.parent / "images")}]},
        "output_dir": str(output),
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "max_steps": 3,
        "tensorboard": False,
        "optim": {"warmup_ratio": 0.0},
    }
    for key, value in overrides.items():
        config[key] = value
    return config
