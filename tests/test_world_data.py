"""What the quickstart's components read out of a world: tower images (hires crops) and LM chats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit.quickstart.world_data import (
    captioned_images,
    chat_conversations,
    hires_crops,
    scene_contexts,
)
from llavakit.synth import WorldSettings, generate_world
from llavakit.synth.files import read_jsonl

SMALL = WorldSettings(stage1_captions=20, train_per_task=10, eval_per_task=4, dev_per_task=4, paraphrase_per_task=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL, progress=False)


def hires_records(world: Path) -> list[dict]:
    return [r for r in read_jsonl(world / "annotations.jsonl") if r["width"] == SMALL.hires_side]


def test_hires_crops_are_the_anyres_tiles_that_hold_whole_objects(world):
    records = hires_records(world)
    assert records
    for record in records:
        full = np.asarray(Image.open(world / record["image"]).convert("RGB"))
        crops = list(hires_crops(world, record, SMALL.image_side, SMALL.image_side))
        # every object lies inside one tile (the grid puts it there), so every box is in a crop
        assert sorted(n for _, _, boxes in crops for n, _ in boxes) == sorted(b["name"] for b in record["boxes"])
        for pixels, caption, boxes in crops:
            assert pixels.shape == (SMALL.image_side, SMALL.image_side, 3)
            # "A blue letter E.", "A orange square and a red circle." (see hires_crops on the article)
            assert caption.startswith("A " + boxes[0][0]) and caption.endswith(".")
            assert all(name in caption for name, _ in boxes)
            for name, (x1, y1, x2, y2) in boxes:
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
                # the box, mapped back onto the full image, shows the same pixels as the crop
                matches = [
                    (r, c) for r in range(full.shape[0] // SMALL.image_side)
                    for c in range(full.shape[1] // SMALL.image_side)
                    if np.array_equal(full[r * SMALL.image_side:(r + 1) * SMALL.image_side,
                                           c * SMALL.image_side:(c + 1) * SMALL.image_side], pixels)
                ]
                assert matches, (record["image"], name)
                cy, cx = int((y1 + y2) / 2 * SMALL.image_side), int((x1 + x2) / 2 * SMALL.image_side)
                if " letter " not in f" {name} ":  # a glyph's centre may fall between its strokes
                    assert tuple(pixels[cy, cx]) != (255, 255, 255), (record["image"], name)


def test_tower_images_add_hires_crops_to_the_normal_scenes(world):
    normal = [r for r in read_jsonl(world / "annotations.jsonl") if r["width"] == SMALL.image_side]
    crops = sum(len(list(hires_crops(world, r, SMALL.image_side, SMALL.image_side))) for r in hires_records(world))
    data = captioned_images(world, SMALL.image_side)
    assert crops > 0 and len(data.pixels) == len(normal) + crops == len(data.captions) == len(data.boxes)
    assert any("letter" in name for boxes in data.boxes for name, _ in boxes)  # the tower sees letters


def test_grounded_chats_put_each_scene_in_words_where_its_image_was(world):
    # the reference: each image's last caption (the one naming every object's place), read directly
    contexts = {r["image"]: r["captions"][-1] for r in read_jsonl(world / "annotations.jsonl")}
    assert scene_contexts(world) == contexts
    records = {r["id"]: r for r in read_jsonl(world / "stage2_instruct.jsonl")}
    plain, grounded = chat_conversations(world), chat_conversations(world, grounded=True)
    assert len(grounded) > len(plain)  # the stage-1.5 descriptions join
    by_first_answer = {}
    for chat in grounded:
        by_first_answer.setdefault(chat[1]["content"], []).append(chat[0]["content"])
    single = next(r for r in records.values() if r["id"].startswith("train-color"))
    question = single["conversations"][0]["value"].replace("<image>\n", "")
    assert f"{contexts[single['image']]}\n{question}" in by_first_answer[single["conversations"][1]["value"]]
    pair = next(r for r in records.values() if r["id"].startswith("train-spot_difference"))
    assert all(image in contexts for image in pair["image"])
    prompts = by_first_answer[pair["conversations"][1]["value"]]
    first, second = (contexts[i] for i in pair["image"])
    assert any(first in p and second in p and p.index(first) < p.index(second) for p in prompts)
    # no placeholder survives, grounded or not
    assert not any("<image>" in m["content"] or "<video>" in m["content"] for c in grounded + plain for m in c)
