"""Reading what the components train on out of a generated synthetic world (docs/synth.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llavakit.synth.files import read_jsonl
from llavakit.synth.language import join_words, sentence

ROLES = {"human": "user", "gpt": "assistant"}
PLACEHOLDERS = ("<image>", "<video>")


def read_manifest(world_dir: Path) -> dict:
    """world.json, which the generator writes last: its presence means the world is complete."""
    path = Path(world_dir) / "world.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{world_dir} holds no complete synthetic world (no world.json); "
            "generate one first with llavakit.synth.generate_world or `llavakit synth --out DIR`"
        ) from None


def world_identity(manifest: dict) -> dict:
    """What determines the world's content: generator, version and settings (not file counts)."""
    return {k: manifest.get(k) for k in ("generator", "version", "settings")}


@dataclass
class CaptionedImages:
    pixels: np.ndarray  # (N, S, S, 3) uint8
    captions: list[list[str]]  # every caption of image i
    boxes: list[list[tuple[str, tuple[float, float, float, float]]]]  # (name, [x1, y1, x2, y2] in 0..1)


def captioned_images(world_dir: Path, image_size: int) -> CaptionedImages:
    """The flat single-image training scenes and their captions (annotations.jsonl).

    annotations.jsonl covers stage-1 and the stage-2 single-image scenes (never eval scenes), so the
    tower sees more scenes than stage-1 alone. Hires scenes are not squashed (their tiny letters
    would vanish while the captions still name them): they are cut into the crops AnyRes shows
    the model, and each crop that holds objects is captioned with their names (hires_crops).
    """
    world_dir = Path(world_dir)
    settings = read_manifest(world_dir)["settings"]
    side, hires_side = settings["image_side"], settings["hires_side"]
    annotations = read_jsonl(world_dir / "annotations.jsonl")
    records = [r for r in annotations if r["width"] == side and r["height"] == side]
    if not records:
        raise ValueError(f"{world_dir}/annotations.jsonl has no {side}px scenes to train the vision tower on")
    pixels = [_load_rgb(world_dir / r["image"], image_size) for r in records]
    captions = [list(r["captions"]) for r in records]
    boxes = [[(b["name"], tuple(b["bbox"])) for b in r["boxes"]] for r in records]
    hires = [r for r in annotations if r["width"] == r["height"] == hires_side] if hires_side % side == 0 else []
    for record in hires:
        for crop, crop_caption, crop_boxes in hires_crops(world_dir, record, side, image_size):
            pixels.append(crop)
            captions.append([crop_caption])
            boxes.append(crop_boxes)
    return CaptionedImages(np.stack(pixels), captions, boxes)


def hires_crops(world_dir: Path, record: dict, crop_side: int, image_size: int):
    """(pixels, caption, boxes) of each crop_side x crop_side tile of a hires scene that wholly
    holds at least one object (on the world's grid, every object lies inside one tile)."""
    with Image.open(Path(world_dir) / record["image"]) as image:
        full = np.asarray(image.convert("RGB"), dtype=np.uint8)
    tiles = record["width"] // crop_side
    scale = record["width"] / crop_side  # a bbox in 0..1 of the scene -> 0..tiles
    for row in range(tiles):
        for col in range(tiles):
            inside = []
            for box in record["boxes"]:
                x1, y1, x2, y2 = (v * scale for v in box["bbox"])
                if col <= x1 and x2 <= col + 1 and row <= y1 and y2 <= row + 1:
                    inside.append((box["name"], tuple(round(v, 4) for v in (x1 - col, y1 - row, x2 - col, y2 - row))))
            if not inside:
                continue
            tile = full[row * crop_side:(row + 1) * crop_side, col * crop_side:(col + 1) * crop_side]
            if crop_side != image_size:
                tile = np.asarray(Image.fromarray(tile).resize((image_size, image_size), Image.Resampling.BICUBIC))
            # Always "a" (so "a orange square"): the grammatical wording changes the tower's weights,
            # and the one run measured with it learned colour worse, failing test_quickstart's
            # control margin. Kept until the two are compared over several seeds.
            names = [f"a {name}" for name, _ in inside]
            yield tile, sentence(join_words(names)), inside


def _load_rgb(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)  # as the LLaVA processor squashes
        return np.asarray(image, dtype=np.uint8)


def corpus_lines(world_dir: Path) -> list[str]:
    text = (Path(world_dir) / "text_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def text_only_turns(record: dict, contexts: Sequence[str] = ()) -> list[dict]:
    """A LLaVA record's conversation as chat messages, the media placeholders removed or, with
    `contexts`, the image placeholders replaced by them in order (each scene described in words
    where its image would be).

    The LM is pretrained on text alone, as a real LLM is; the placeholders only mean something
    once a projector puts visual features there.
    """
    messages, contexts = [], list(contexts)
    for turn in record["conversations"]:
        text = turn["value"]
        while contexts and PLACEHOLDERS[0] in text:
            text = text.replace(PLACEHOLDERS[0], contexts.pop(0), 1)
        for placeholder in PLACEHOLDERS:
            text = text.replace(placeholder, "")
        text = "\n".join(line.strip() for line in text.split("\n") if line.strip())
        messages.append({"role": ROLES.get(turn["from"], turn["from"]), "content": text})
    return messages


def scene_contexts(world_dir: Path) -> dict[str, str]:
    """Image path -> the scene in words (its caption that names every object with its size,
    colour, shape and place), for the images annotations.jsonl describes."""
    return {r["image"]: r["captions"][-1] for r in read_jsonl(Path(world_dir) / "annotations.jsonl")}


def chat_conversations(world_dir: Path, grounded: bool = False) -> list[list[dict]]:
    """Stage-2 conversations (the question-answer text of the corpus), text only, for chat rendering.

    With `grounded`, a conversation whose images are all annotated has each scene in words where
    its image would be, and the stage-1.5 descriptions join them: the answers can then be read from the
    context instead of guessed from the question. An LM trained only on ungrounded text learns
    to ignore its context (nothing there predicts a colour), and a projector cannot teach a
    frozen LM to read image tokens in a few dozen stage-1 steps: with 16 tokens per image, a
    stage-1.5 model described every scene as "three objects ... circle" whatever it showed.
    """
    world_dir = Path(world_dir)
    records = read_jsonl(world_dir / "stage2_instruct.jsonl")
    if not grounded:
        conversations = [text_only_turns(r) for r in records]
    else:
        recaps = world_dir / "stage15_recap.jsonl"
        records += read_jsonl(recaps) if recaps.is_file() else []
        contexts = scene_contexts(world_dir)
        conversations = []
        for record in records:
            images = record.get("image") or []
            images = [images] if isinstance(images, str) else images
            grounded_in = [contexts[i] for i in images] if all(i in contexts for i in images) else []
            conversations.append(text_only_turns(record, grounded_in))
    return [c for c in conversations if all(m["content"] for m in c)]
