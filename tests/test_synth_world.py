"""The synthetic world, end to end: generate a small world into tmp_path, read the PNGs, MP4s and
JSONL back, and check that what the text says is what the pixels show."""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit.synth import (
    WorldSettings,
    generate_world,
    is_complete,
    render_random_scene,
    vocab,
)
from llavakit.synth.files import read_jsonl
from llavakit.synth.solids import shade
from llavakit.synth.video import decode_mp4

SMALL = WorldSettings(stage1_captions=40, train_per_task=16, eval_per_task=16, dev_per_task=8, paraphrase_per_task=8,
                      motion_drill=40)
SHAPE_SCENES = round(5 / 3 * SMALL.train_per_task)  # stage15_shape.jsonl: 500 at the default 300 a task
EVAL_TASKS = (
    "color", "shape", "count", "position", "hires_detail",
    "spot_difference", "which_image", "video_direction", "multiview",
)  # fmt: skip
WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL, progress=False)


def evals(world: Path, task: str) -> list[dict]:
    return read_jsonl(world / "test" / f"{task}.jsonl")


def pixels(world: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(world / relative).convert("RGB"))


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---- pixel analysis, independent of the generator's own geometry ----------------------------


def mask_of(image: np.ndarray, rgb) -> np.ndarray:
    return np.all(image == np.array(rgb, dtype=image.dtype), axis=-1)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected blobs of a boolean mask, each as a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    blobs = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        blob = np.zeros_like(mask, dtype=bool)
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            blob[cy, cx] = True
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        blobs.append(blob)
    return blobs


def classify_shape(blob: np.ndarray) -> str:
    """Name a flat shape from its pixels: fill ratio and the widths of its top, middle, bottom rows."""
    ys, xs = np.nonzero(blob)
    crop = blob[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    fill = crop.mean()
    top, middle, bottom = crop[0].sum(), crop[h // 2].sum(), crop[-1].sum()
    if fill > 0.93:
        return "square"
    if bottom >= 0.8 * w and top <= 0.4 * w:
        return "triangle"
    if fill > 0.68:
        return "circle"
    if middle >= 0.9 * w and top >= 3 and bottom >= 3:
        return "cross"
    return "diamond"


def shapes_of_color(image: np.ndarray, color: str) -> list[str]:
    return [classify_shape(b) for b in components(mask_of(image, vocab.COLORS[color]))]


def object_blobs(image: np.ndarray) -> list[np.ndarray]:
    return components(~mask_of(image, WHITE))


def nearest_color_labels(image: np.ndarray, backgrounds) -> np.ndarray:
    """Each pixel -> colour name (any shade) or "" for background, by nearest reference colour."""
    names, refs = [""] * len(backgrounds), list(backgrounds)
    for name in vocab.COLORS:
        for part in ("base", "light", "dark"):
            names.append(name)
            refs.append(shade(name, part))
    distance = ((image[:, :, None, :].astype(int) - np.array(refs)[None, None]) ** 2).sum(-1)
    return np.array(names)[distance.argmin(-1)]


def colors_seen(image: np.ndarray, backgrounds, min_pixels: int = 6) -> set[str]:
    labels = nearest_color_labels(image, backgrounds)
    return {name for name in vocab.COLORS if (labels == name).sum() >= min_pixels}


def quoted_name(question: str, pattern: str) -> tuple[str, str]:
    match = re.search(pattern, question)
    assert match, question
    return match.group(1), match.group(2)


# ---- layout and formats ----------------------------------------------------------------------


def test_layout_counts_and_media_exist(world):
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["settings"] == SMALL.to_dict() and manifest["seed"] == 0
    assert set(manifest["tasks"]) == set(EVAL_TASKS)
    for name, count in manifest["files"].items():
        assert len((world / name).read_text().splitlines()) == count, name
    assert manifest["files"]["stage1_captions.jsonl"] == SMALL.n_stage1 == 40
    for task in EVAL_TASKS:
        assert manifest["files"][f"test/{task}.jsonl"] == 16
    media = set()
    drills = ["stage15_grounding.jsonl", "stage15_listing.jsonl", "stage15_side_listing.jsonl", "stage15_relation.jsonl",
              "stage15_tiny.jsonl", "stage15_shape.jsonl", "stage15_motion.jsonl"]
    assert [manifest["files"][name] for name in drills] == ([10 * SMALL.train_per_task] * 4 + [SMALL.train_per_task]
                                                            + [SHAPE_SCENES, SMALL.motion_drill])
    for name in ["stage1_captions.jsonl", "stage15_recap.jsonl", *drills, "stage2_instruct.jsonl"] + [
        f"{split}/{t}.jsonl" for t in EVAL_TASKS for split in ("test", "dev", "test_paraphrase")
    ]:
        for record in read_jsonl(world / name):
            image = record.get("image", [])
            media.update([image] if isinstance(image, str) else image)
            media.update([record["video"]] if "video" in record else [])
    assert all((world / path).is_file() for path in media)
    assert {p for p in media if p.startswith("images/")} == {f"images/{p.name}" for p in (world / "images").iterdir()}
    assert manifest["media"]["images"] == len(list((world / "images").iterdir()))
    assert manifest["media"]["videos"] == len(list((world / "videos").iterdir()))
    assert not list(world.rglob("*.tmp"))


def placeholder_check(record: dict) -> None:
    human = " ".join(t["value"] for t in record["conversations"] if t["from"] == "human")
    images = record.get("image")
    n_images = 0 if images is None else 1 if isinstance(images, str) else len(images)
    assert human.count("<image>") == n_images, record["id"]
    assert human.count("<video>") == (1 if "video" in record else 0), record["id"]
    assert [t["from"] for t in record["conversations"]] == ["human", "gpt"] * (len(record["conversations"]) // 2)
    if isinstance(images, list):
        assert record["image_format"] in ("interleaved", "front")
        first = record["conversations"][0]["value"]
        if record["image_format"] == "front":
            assert first.startswith("<image>\n" * n_images)
        else:
            assert re.match(r"(Image|View) 1: <image>\n(Image|View) 2: <image>\n", first)


def test_llava_format_placeholders_and_kinds(world):
    stage2 = read_jsonl(world / "stage2_instruct.jsonl")
    for record in read_jsonl(world / "stage1_captions.jsonl"):
        assert record["conversations"][0]["value"] == "<image>"
        placeholder_check(record)
    kinds = {}
    for record in stage2:
        placeholder_check(record)
        kinds.setdefault(record["id"].split("-")[1], []).append(record)
    assert set(EVAL_TASKS) | {"conversation", "detail", "reasoning", "video_caption", "text_only"} == set(kinds)
    assert all("image" not in r and "video" not in r for r in kinds["text_only"])
    assert any(len(r["conversations"]) >= 4 for r in kinds["conversation"])  # multi-turn
    formats = {r["image_format"] for r in stage2 if isinstance(r.get("image"), list)}
    assert formats == {"interleaved", "front"}
    # stage-2 is shuffled, so a first:N mixture sees every kind
    assert len({r["id"].split("-")[1] for r in stage2[:60]}) >= 8


def annotation_by_image(world: Path) -> dict[str, dict]:
    return {a["image"]: a for a in read_jsonl(world / "annotations.jsonl")}


def blob_named(image: np.ndarray, name: str) -> np.ndarray:
    """The one blob of this colour and shape ("red circle")."""
    color, shape = name.split()
    [blob] = [b for b in components(mask_of(image, vocab.COLORS[color])) if classify_shape(b) == shape]
    return blob


def answer_from_pixels(image: np.ndarray, question: str) -> str:
    """What the pixels say the answer to a single-image question is."""
    blobs = object_blobs(image)
    if question.startswith("How many objects"):
        return str(len(blobs))
    if m := re.match(r"What color is the (\w+)\?", question):
        colors = [c for c in vocab.COLORS for b in components(mask_of(image, vocab.COLORS[c]))
                  if m[1] in ("object", classify_shape(b))]
        assert len(colors) == 1, question
        return colors[0]
    if m := re.match(r"What shape is the (?:(\w+) )?object\?", question):
        [blob] = components(mask_of(image, vocab.COLORS[m[1]])) if m[1] else blobs
        return classify_shape(blob)
    m = re.match(r"Is the (\w+ \w+) (left or right of|above or below) the (\w+ \w+)\? Name each side first\.$",
                 question)
    assert m, question
    axis = int(m[2] == "above or below")
    (ay, ax), (by, bx) = (np.argwhere(blob_named(image, name)).mean(0) for name in (m[1], m[3]))
    relation = ("left" if ax < bx else "right") if axis == 0 else ("above" if ay < by else "below")
    # the reasoned reply: each object by its colour and side of the centre, then the relation
    sides = ", ".join(f"{name.split()[0]} {side_from_pixels(image, name.split()[0], axis)}" for name in (m[1], m[3]))
    return f"{sides}, so {relation}."


def test_single_image_training_samples_ask_follow_ups_that_match_the_pixels(world):
    checked = 0
    for record in read_jsonl(world / "stage2_instruct.jsonl"):
        kind = record["id"].split("-")[1]
        if kind not in ("color", "shape", "count", "position", "hires_detail"):
            continue
        turns = record["conversations"]
        questions = [t["value"].removeprefix("<image>\n") for t in turns[::2]]
        if kind == "hires_detail":
            assert len(turns) == 2, record["id"]  # the tiny detail is the point: no follow-ups
            continue
        assert 2 <= len(turns) <= 2 * (1 + SMALL.follow_ups), record["id"]
        assert len(set(questions)) == len(questions), record["id"]  # never the same question twice
        image = pixels(world, record["image"])
        for question, answer in zip(questions, [t["value"] for t in turns[1::2]]):
            assert answer == answer_from_pixels(image, question), (record["id"], question)
            checked += 1
    assert checked > 4 * 16 * 2  # most samples carry follow-ups
    for record in evals(world, "color") + evals(world, "count"):
        assert len(record["conversations"]) == 2  # eval asks exactly one question


def test_stage15_recaptions_describe_every_object_of_the_stage1_images(world):
    stage1 = read_jsonl(world / "stage1_captions.jsonl")
    stage15 = read_jsonl(world / "stage15_recap.jsonl")
    annotations = annotation_by_image(world)
    assert [r["image"] for r in stage15] == [r["image"] for r in stage1]
    for record in stage15:
        prompt, description = (t["value"] for t in record["conversations"])
        assert prompt == "<image>\nPlease generate detailed descriptions of the given image."
        boxes = annotations[record["image"]]["boxes"]
        assert all(b["name"] in description for b in boxes), record["id"]
        assert description.startswith(f"There {'is' if len(boxes) == 1 else 'are'} ")


def drill_samples(world: Path, name: str, count: int):
    """Each record of a stage-1.5 drill file (there must be ``count``), placeholders checked (the
    image first in the first turn), with its image's pixels, its questions (the image placeholder
    removed) and its answers."""
    records = read_jsonl(world / name)
    assert len(records) == count, name
    for record in records:
        placeholder_check(record)
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n"), record["id"]
        yield (record, pixels(world, record["image"]), [t["value"].removeprefix("<image>\n") for t in turns[::2]],
               [t["value"] for t in turns[1::2]])


def test_stage15_grounding_asks_the_colour_of_every_object_by_its_shape(world):
    """Scenes of 3-5 objects of different shapes; each object's colour asked once, by its shape,
    with answers that match the pixels; the image placeholder only in the first turn."""
    sizes = set()
    for record, image, questions, answers in drill_samples(world, "stage15_grounding.jsonl", 10 * SMALL.train_per_task):
        assert all("<image>" not in q for q in questions)
        shapes = [quoted_name(q, r"What color is the (\w+)(\?) Answer with one word\.")[0] for q in questions]
        assert len(set(shapes)) == len(shapes) == len(object_blobs(image)), record["id"]  # every object, once
        for question, answer in zip(questions, answers):
            assert answer == answer_from_pixels(image, question), (record["id"], question)
        sizes.add(len(shapes))
    assert sizes == {3, 4, 5}


def test_stage15_shape_grounding_asks_the_shape_of_every_object_by_its_colour(world):
    """Scenes of 3-5 objects of different colours; each object's shape asked once, by its colour,
    with answers that match the pixels."""
    sizes = set()
    for record, image, questions, answers in drill_samples(world, "stage15_shape.jsonl", SHAPE_SCENES):
        colors = [re.fullmatch(r"What shape is the (\w+) object\? Answer with one word\.", q)[1] for q in questions]
        assert len(set(colors)) == len(colors) == len(object_blobs(image)), record["id"]  # every object, once
        for question, answer in zip(questions, answers):
            assert answer == answer_from_pixels(image, question), (record["id"], question)
        sizes.add(len(colors))
    assert sizes == {3, 4, 5}


def test_stage15_listing_names_every_object_by_colour_and_shape(world):
    """Scenes of 3-5 objects of different shapes and colours; one turn naming each object once as
    the pixels show it: "<color> <shape>" in the colours' order, or "<shape> <color>" in the
    shapes' order, half the scenes each."""
    sizes, kinds = set(), []
    for record, image, [question], [answer] in drill_samples(world, "stage15_listing.jsonl",
                                                             10 * SMALL.train_per_task):
        color_first = question == "List the objects by color and shape."
        assert color_first or question == "List the objects by shape and color.", question
        pairs = [tuple(item.split()) for item in answer.removesuffix(".").split(", ")]
        named = [(a, b) if color_first else (b, a) for a, b in pairs]  # (color, shape)
        assert len(named) == len(object_blobs(image)) == len({c for c, _ in named}) == len({s for _, s in named})
        for color, shape in named:
            assert answer_from_pixels(image, f"What shape is the {color} object?") == shape, record["id"]
        ranks = [list(vocab.COLORS).index(c) if color_first else list(vocab.SHAPES).index(s) for c, s in named]
        assert ranks == sorted(ranks), record["id"]
        sizes.add(len(named))
        kinds.append(color_first)
    assert sizes == {3, 4, 5} and kinds == [i % 2 == 0 for i in range(len(kinds))]


def test_stage15_tiny_asks_the_colour_of_the_one_tiny_object_of_a_large_image(world):
    """The detail task's colour question on large images of its own: the answer is the colour of
    the smallest blob, which is a few pixels among objects many times its size; every colour asked."""
    answers = []
    for record, image, [question], [answer] in drill_samples(world, "stage15_tiny.jsonl", SMALL.train_per_task):
        assert question == "What color is the tiny object? Answer with one word."
        assert image.shape[:2] == (SMALL.hires_side, SMALL.hires_side)
        blobs = sorted(object_blobs(image), key=lambda blob: blob.sum())
        assert 2 <= len(blobs) <= 4, record["id"]
        tiny, *large = blobs
        assert tiny.sum() * 10 < large[0].sum(), record["id"]
        assert set(map(tuple, image[tiny])) == {vocab.COLORS[answer]}, record["id"]
        answers.append(answer)
    assert set(answers) == set(vocab.COLORS)


def side_from_pixels(image: np.ndarray, color: str, axis: int) -> str:
    """The side of the image's centre the object of this colour is on: left or right (axis 0),
    above or below (axis 1); its centroid must be clear of the centre line."""
    [blob] = components(mask_of(image, vocab.COLORS[color]))
    offset = np.argwhere(blob).mean(0)[1 - axis] - image.shape[0] / 2  # argwhere gives (row, column)
    assert abs(offset) >= 0.03 * image.shape[0]  # the centroid, not the box centre: a little slack
    return [("left", "right"), ("above", "below")][axis][int(offset > 0)]


def test_stage15_side_listing_names_every_objects_side_of_the_centre(world):
    """Scenes of 3-5 objects of different shapes and colours; one turn naming each object once by
    its colour and the side of the image's centre its pixels are on, left or right (even samples)
    or above or below (odd samples), in the colours' order."""
    sizes, axes, words = set(), [], set()
    for record, image, [question], [answer] in drill_samples(world, "stage15_side_listing.jsonl",
                                                             10 * SMALL.train_per_task):
        axis = ["List the objects by color, left or right of the center.",
                "List the objects by color, above or below the center."].index(question)
        named = [tuple(item.split()) for item in answer.removesuffix(".").split(", ")]
        assert len(named) == len(object_blobs(image)) == len({c for c, _ in named}), record["id"]
        for color, word in named:
            assert word == side_from_pixels(image, color, axis), (record["id"], color)
            words.add(word)
        ranks = [list(vocab.COLORS).index(c) for c, _ in named]
        assert ranks == sorted(ranks), record["id"]
        sizes.add(len(named))
        axes.append(axis)
    assert sizes == {3, 4, 5} and axes == [i % 2 for i in range(len(axes))] and words == set(vocab.RELATIONS)


def test_stage15_relation_questions_are_answered_side_by_side_as_the_pixels_show(world):
    """Scenes of 3-5 objects of different shapes and colours; up to four of the eval's relation
    questions, each object asked about once, each answered with both objects' sides of the centre
    and then the relation, as the pixels show."""
    relations, agree = set(), []
    for record, image, questions, answers in drill_samples(world, "stage15_relation.jsonl", 10 * SMALL.train_per_task):
        assert 1 <= len(questions) <= 4 and len(object_blobs(image)) in (3, 4, 5), record["id"]
        subjects = [re.match(r"Is the (\w+ \w+) ", q)[1] for q in questions]
        assert len(set(subjects)) == len(subjects), record["id"]
        for question, answer in zip(questions, answers):
            assert answer == answer_from_pixels(image, question), (record["id"], question)
            first, second, relation = re.fullmatch(r"\w+ (\w+), \w+ (\w+), so (\w+)\.", answer).groups()
            relations.add(relation)
            agree.append(first != second)
    assert relations == set(vocab.RELATIONS)
    # both kinds: objects on two sides (the sides give the relation) and on one (they do not)
    assert 0.3 < np.mean(agree) < 0.95


def test_eval_records_and_chance(world):
    for task in EVAL_TASKS:
        records = evals(world, task)
        for record in records:
            placeholder_check(record)
            assert record["task"] == task
            assert record["question"] == record["conversations"][0]["value"]
            reply = record["conversations"][1]["value"]
            # a reasoned reply ends with its answer (position: "red left, blue right, so left.")
            assert record["answer"] == (reply if task != "position" else reply.split(", so ")[-1].removesuffix("."))
            assert record["answer"] in record["options"] and set(record["options"]) <= set(record["choices"])
            assert record["question"].endswith(
                ("Answer with one word.", "Answer with a number.", "Answer with one letter.", "Answer first or second.",
                 "Name each side first.")
            )
        answers = [r["answer"] for r in records]
        majority = max(answers.count(a) for a in set(answers)) / len(answers)
        chance = records[0]["chance"]
        assert chance >= max(1 / len(records[0]["choices"]), majority) - 1e-4
        assert chance <= 0.5 + 1e-9, task  # balanced splits: guessing never does better than a coin
    assert evals(world, "which_image")[0]["chance"] == 0.5
    assert evals(world, "position")[0]["chance"] == 0.5
    assert {r["image_format"] for r in evals(world, "spot_difference")} == {"interleaved", "front"}


def test_annotation_boxes_match_pixels(world):
    annotations = read_jsonl(world / "annotations.jsonl")
    assert len(annotations) >= SMALL.n_stage1
    for annotation in annotations:
        image = pixels(world, annotation["image"])
        assert image.shape[:2] == (annotation["height"], annotation["width"])
        assert len(annotation["captions"]) == 3
        for box in annotation["boxes"]:
            x1, y1, x2, y2 = box["bbox"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert all(round(v, 3) == v for v in box["bbox"])
            color, kind = box["name"].split(" ")[:2]
            if kind == "letter":
                continue  # a glyph's centre may fall between strokes
            cx, cy = int((x1 + x2) / 2 * image.shape[1]), int((y1 + y2) / 2 * image.shape[0])
            assert tuple(image[cy, cx]) == vocab.COLORS[color], (annotation["image"], box)


def test_every_object_of_a_normal_scene_lies_inside_one_grid_cell(world):
    """What a 16 px patch of the quickstart tower sees: each drawn object whole, in one cell."""
    grid, checked = SMALL.grid, 0
    for annotation in read_jsonl(world / "annotations.jsonl"):
        if annotation["width"] != SMALL.image_side:
            continue
        image = pixels(world, annotation["image"])
        blobs = object_blobs(image)
        assert len(blobs) == len(annotation["boxes"]), annotation["image"]
        for blob in blobs:
            ys, xs = np.nonzero(blob)
            assert xs.min() // grid == xs.max() // grid and ys.min() // grid == ys.max() // grid, annotation["image"]
            checked += 1
    assert checked > 100


# ---- every scored answer agrees with the pixels ------------------------------------------------


def test_color_answers(world):
    for record in evals(world, "color"):
        image = pixels(world, record["image"])
        if "the object?" in record["question"]:
            assert len(object_blobs(image)) == 1
            assert len(components(mask_of(image, vocab.COLORS[record["answer"]]))) == 1
        else:
            shape, _ = quoted_name(record["question"], r"What color is the (\w+)(\?)")
            assert shape in shapes_of_color(image, record["answer"]), record["id"]


def test_shape_answers(world):
    for record in evals(world, "shape"):
        image = pixels(world, record["image"])
        if "the object?" in record["question"]:
            blobs = object_blobs(image)
            assert len(blobs) == 1 and classify_shape(blobs[0]) == record["answer"], record["id"]
        else:
            color, _ = quoted_name(record["question"], r"What shape is the (\w+)( )object")
            assert shapes_of_color(image, color) == [record["answer"]], record["id"]


def test_count_answers(world):
    for record in evals(world, "count"):
        assert len(object_blobs(pixels(world, record["image"]))) == int(record["answer"]), record["id"]


def test_position_answers(world):
    for record in evals(world, "position"):
        image = pixels(world, record["image"])
        a, relation, b = re.search(
            r"Is the (\w+ \w+) (left or right of|above or below) the (\w+ \w+)\?", record["question"]
        ).groups()
        (ay, ax), (by, bx) = (np.argwhere(mask_of(image, vocab.COLORS[name.split()[0]])).mean(0) for name in (a, b))
        assert record["conversations"][1]["value"] == answer_from_pixels(image, record["question"].split("\n")[-1])
        if relation.startswith("left"):
            assert record["answer"] == ("left" if ax < bx else "right")
            assert abs(ax - bx) >= 0.1 * image.shape[1]
        else:
            assert record["answer"] == ("above" if ay < by else "below")
            assert abs(ay - by) >= 0.1 * image.shape[0]


def test_hires_detail_is_readable_only_at_full_size(world):
    annotations = {a["image"]: a for a in read_jsonl(world / "annotations.jsonl")}
    hires = [r for r in read_jsonl(world / "stage2_instruct.jsonl") if r["id"].startswith("train-hires_detail")]
    assert {r["conversations"][1]["value"] in vocab.LETTERS for r in hires} == {True, False}
    for record in hires:
        image = pixels(world, record["image"])
        assert image.shape[:2] == (SMALL.hires_side, SMALL.hires_side)
        detail = annotations[record["image"]]["boxes"][-1]
        x1, y1, x2, y2 = (round(v * SMALL.hires_side) for v in detail["bbox"])
        squashed_px = (y2 - y1) * SMALL.image_side / SMALL.hires_side
        assert squashed_px <= 2.0, "the detail must shrink to about a pixel at the normal side"
        answer = record["conversations"][1]["value"]
        color = detail["name"].split()[0]
        if answer in vocab.LETTERS:
            glyph = mask_of(image[y1:y2, x1:x2], vocab.COLORS[color])
            cell = (x2 - x1) // 5
            read = tuple("".join("#" if glyph[r * cell, c * cell] else "." for c in range(5)) for r in range(7))
            assert read == vocab.GLYPHS[answer]
        else:
            assert color == answer
            assert tuple(image[(y1 + y2) // 2, (x1 + x2) // 2]) == vocab.COLORS[answer]


def test_spot_difference_answers(world):
    for record in evals(world, "spot_difference"):
        before, after = (pixels(world, p) for p in record["image"])
        changed = np.any(before != after, axis=-1)
        assert changed.any()
        blobs = components(changed)
        assert len(blobs) == 1, record["id"]
        assert classify_shape(blobs[0]) == record["answer"], record["id"]


def test_which_image_answers(world):
    for record in evals(world, "which_image"):
        color, shape = quoted_name(record["question"], r"Which image has an? (\w+) (\w+)\?")
        has = [shape in shapes_of_color(pixels(world, p), color) for p in record["image"]]
        assert has == ([True, False] if record["answer"] == "first" else [False, True]), record["id"]


def assert_moves_as_answered(world: Path, record_id: str, video: str, question: str, answer: str) -> None:
    """The object the question names (by its colour, unique in the clip) moves `answer`, in a straight line."""
    frames = decode_mp4(world / video)
    assert len(frames) == SMALL.video_frames and frames[0].shape == (SMALL.video_side, SMALL.video_side, 3)
    color = re.search(r"Which direction is the (\w+) \w+ moving\? Answer with one word\.$", question).group(1)
    centres = [np.argwhere(nearest_color_labels(f, [WHITE]) == color).mean(0) for f in frames]
    dy, dx = centres[-1] - centres[0]
    expected = {"left": dx < -10, "right": dx > 10, "up": dy < -10, "down": dy > 10}
    assert expected[answer], (record_id, dx, dy)
    assert min(abs(dx), abs(dy)) < 2  # a straight line along one axis


def test_video_objects_move_in_stated_direction(world):
    for record in evals(world, "video_direction"):
        assert_moves_as_answered(world, record["id"], record["video"], record["question"], record["answer"])


def test_stage15_motion_drill_asks_directions_that_match_the_frames(world):
    """As many clips as motion_drill asks, other draws than stage-2's and the eval's, balanced; the
    mover named by colour and shape in even clips, by its colour alone ("the blue object") in odd ones."""
    records = read_jsonl(world / "stage15_motion.jsonl")
    assert len(records) == SMALL.motion_drill
    answers = []
    for index, record in enumerate(records):
        placeholder_check(record)
        (question, answer) = [t["value"] for t in record["conversations"]]
        assert question.startswith("<video>\n") and record["video"].startswith("videos/train_motion_")
        noun = re.search(r"the \w+ (\w+) moving", question).group(1)
        assert (noun == "object") == (index % 2 == 1) and (noun == "object" or noun in vocab.SHAPES), question
        assert_moves_as_answered(world, record["id"], record["video"], question.removeprefix("<video>\n"), answer)
        answers.append(answer)
    assert {answers.count(d) for d in vocab.DIRECTIONS} == {len(records) // 4}
    # other clips than stage-2's, by content (their file names differ by construction)
    def digests(paths) -> set[str]:
        return {hashlib.sha256((world / p).read_bytes()).hexdigest() for p in paths}

    stage2_videos = [r["video"] for r in read_jsonl(world / "stage2_instruct.jsonl") if "video" in r]
    assert stage2_videos and not digests(stage2_videos) & digests(r["video"] for r in records)


def test_multiview_answers_need_more_than_one_view(world):
    backgrounds = [vocab.SKY, vocab.GROUND]
    hiding_views = set()
    for record in evals(world, "multiview"):
        seen = [colors_seen(pixels(world, p), backgrounds) for p in record["image"]]
        assert 2 <= len(seen) <= 3
        everything = set().union(*seen)
        if record["answer"].isdigit():
            assert len(everything) == int(record["answer"]), record["id"]
            short = [v for v, colors in enumerate(seen) if len(colors) < len(everything)]
            assert short, "one object is hidden in some view"
            hiding_views.update(short)
        else:
            match = re.search(r"hidden in (view (\d)|the (\w+) view)", record["question"])
            view = int(match.group(2)) - 1 if match.group(2) else vocab.ORDINALS.index(match.group(3))
            assert record["answer"] not in seen[view] and record["answer"] in everything, record["id"]
            hiding_views.add(view)
    assert hiding_views - {0}, "the hidden object is not always in the first view"


# ---- splits, determinism, reruns ---------------------------------------------------------------


def test_eval_scenes_never_in_training(world):
    def decoded_digest(path: Path) -> str:
        return hashlib.sha256(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()

    train, held_out = set(), set()
    for path in sorted((world / "images").iterdir()):
        (held_out if path.name.startswith("test_") else train).add(decoded_digest(path))
    assert held_out and train and not held_out & train
    train_videos = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (world / "videos").glob("train_*")}
    eval_videos = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (world / "videos").glob("test_*")}
    assert eval_videos and not eval_videos & train_videos


def test_same_seed_same_bytes_different_seed_different(world, tmp_path):
    again = generate_world(tmp_path / "again", SMALL, progress=False)
    first, second = file_digests(world), file_digests(again)
    assert first.keys() == second.keys()
    # Every file byte for byte, clips too (libx264's lookahead once made a few differ, encode_mp4).
    assert [name for name in first if first[name] != second[name]] == []
    other = generate_world(
        tmp_path / "other",
        WorldSettings(seed=1, stage1_captions=40, train_per_task=16, eval_per_task=16),
        progress=False,
    )
    for name in ("stage1_captions.jsonl", "stage2_instruct.jsonl", "test/color.jsonl", "images/test_color_00000.png",
                 "dev/color.jsonl"):
        assert (other / name).read_bytes() != (world / name).read_bytes(), name


def test_text_corpus_covers_every_eval_word(world):
    corpus = (world / "text_corpus.txt").read_text().splitlines()
    assert corpus == sorted(set(corpus)) and all(line.strip() == line and line for line in corpus)
    assert not any("<image>" in line or "<video>" in line for line in corpus)
    words = {w for line in corpus for w in re.findall(r"[\w]+", line)}
    for task in EVAL_TASKS:
        for record in evals(world, task):
            text = record["question"].replace("<image>", "").replace("<video>", "") + " " + record["answer"]
            assert set(re.findall(r"[\w]+", text)) <= words, record["id"]


def test_rerun_with_same_settings_does_nothing(world, capsys):
    from llavakit.synth import cli

    before = (world / "world.json").stat().st_mtime_ns
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["--out", str(world), "--stage1-captions", "40", "--train-per-task", "16", "--eval-per-task", "16",
         "--dev-per-task", "8", "--paraphrase-per-task", "8",
         "--motion-drill", "40"]
    )
    assert cli.settings_from_args(args) == SMALL
    assert cli.run(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (world / "world.json").stat().st_mtime_ns == before


def test_killed_run_leaves_no_complete_marker_and_no_partial_files(tmp_path, monkeypatch):
    from llavakit.synth import world as world_module

    settings = WorldSettings(stage1_captions=4, train_per_task=4, eval_per_task=4)
    out = generate_world(tmp_path / "w", settings, progress=False)
    bigger = WorldSettings(stage1_captions=4, train_per_task=6, eval_per_task=4)

    def crash(ctx):
        raise KeyboardInterrupt("killed")

    broken = tuple(
        t if t.name != "which_image" else type(t)(t.name, crash, t.choices) for t in world_module.TRAIN_KINDS
    )
    monkeypatch.setattr(world_module, "TRAIN_KINDS", broken)
    with pytest.raises(KeyboardInterrupt):
        generate_world(out, bigger, progress=False)
    assert not (out / "world.json").exists() and not is_complete(out, settings)
    assert not list(out.rglob("*.tmp"))
    for path in out.rglob("*.jsonl"):  # the old world's files, whole
        assert all(json.loads(line) for line in path.read_text().splitlines())
    monkeypatch.undo()
    generate_world(out, settings, progress=False)
    assert is_complete(out, settings)
    assert not list((out / "images").glob("train_color_00004*")), "files of the interrupted run are pruned"


def test_regenerating_smaller_world_prunes_stale_files(tmp_path):
    out = generate_world(
        tmp_path / "w", WorldSettings(stage1_captions=6, train_per_task=3, eval_per_task=3, motion_drill=4),
        progress=False,
    )
    assert (out / "images" / "stage1_caption_00005.png").exists()
    assert (out / "stage15_motion.jsonl").exists() and (out / "videos" / "train_motion_00003.mp4").exists()
    # what a SIGKILL during an atomic write leaves, and a user's own file, which must survive
    (out / ".stage2_instruct.jsonl.k2j4_x9a.tmp").write_text("half")
    (out / "images" / ".train_color_00000.png.abc123de.tmp").write_bytes(b"half")
    (out / "images" / "my_photo.png").write_bytes(b"mine")
    generate_world(out, WorldSettings(stage1_captions=2, train_per_task=3, eval_per_task=3), progress=False)
    assert not (out / "images" / "stage1_caption_00005.png").exists()
    assert not (out / "stage15_motion.jsonl").exists() and not list((out / "videos").glob("train_motion_*"))
    assert not list(out.rglob("*.tmp"))
    assert (out / "images" / "my_photo.png").read_bytes() == b"mine"
    n_images = json.loads((out / "world.json").read_text())["media"]["images"]
    assert len(list((out / "images").iterdir())) == n_images + 1


# ---- the one-scene API -------------------------------------------------------------------------


def test_render_random_scene_is_seeded_and_annotated():
    first, again, other = render_random_scene(3), render_random_scene(3), render_random_scene(4)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.annotation == again.annotation and first.annotation != other.annotation
    image = np.asarray(first.image)
    lines = first.symbolic().splitlines()
    assert lines[:3] == first.annotation["captions"]
    for line, box in zip(lines[3:], first.annotation["boxes"]):
        assert re.fullmatch(r"\w+ \w+: \[\d\.\d{3}, \d\.\d{3}, \d\.\d{3}, \d\.\d{3}\]", line)
        color, shape = box["name"].split()
        assert shape in shapes_of_color(image, color)


@pytest.mark.parametrize("seed", range(12))
def test_shape_classifier_agrees_with_renderer(seed):
    """Guards the test helper itself: every shape and size is recognised from pixels."""
    scene = render_random_scene(seed, side=64)
    image = np.asarray(scene.image)
    for obj in scene.scene.objects:
        assert obj.shape in shapes_of_color(image, obj.color)
