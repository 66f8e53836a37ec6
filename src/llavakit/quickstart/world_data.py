"""Reading what the components train on out of a generated synthetic world (docs/synth.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llavakit.synth.files import read_jsonl

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
    tower sees more scenes than stage-1 alone. Hires scenes are left out: squashed to the tower's
    size, their tiny letters vanish while the captions still name them.
    """
    world_dir = Path(world_dir)
    side = read_manifest(world_dir)["settings"]["image_side"]
    records = [r for r in read_jsonl(world_dir / "annotations.jsonl") if r["width"] == side and r["height"] == side]
    if not records:
        raise ValueError(f"{world_dir}/annotations.jsonl has no {side}px scenes to train the vision tower on")
    pixels = np.stack([_load_rgb(world_dir / r["image"], image_size) for r in records])
    boxes = [[(b["name"], tuple(b["bbox"])) for b in r["boxes"]] for r in records]
    return CaptionedImages(pixels, [list(r["captions"]) for r in records], boxes)


def _load_rgb(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)  # as the LLaVA processor squashes
        return np.asarray(image, dtype=np.uint8)


def corpus_lines(world_dir: Path) -> list[str]:
    text = (Path(world_dir) / "text_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def text_only_turns(record: dict) -> list[dict]:
    """A LLaVA record's conversation as chat messages with the media placeholders removed.

    The LM is pretrained on text alone, as a real LLM is; the placeholders only mean something
    once a projector puts visual features there.
    """
    messages = []
    for turn in record["conversations"]:
        text = turn["value"]
        for placeholder in PLACEHOLDERS:
            text = text.replace(placeholder, "")
        text = "\n".join(line.strip() for line in text.split("\n") if line.strip())
        messages.append({"role": ROLES.get(turn["from"], turn["from"]), "content": text})
    return messages


def chat_conversations(world_dir: Path) -> list[list[dict]]:
    """Stage-2 conversations (the question-answer text of the corpus), text only, for chat rendering."""
    records = read_jsonl(Path(world_dir) / "stage2_instruct.jsonl")
    conversations = [text_only_turns(r) for r in records]
    return [c for c in conversations if all(m["content"] for m in c)]
