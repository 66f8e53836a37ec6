"""The JSON records of a world: LLaVA samples, eval samples (with chance level), annotations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .language import captions
from .scene import Scene, normalized_box
from .task import Sample


def _media(sample: Sample) -> dict:
    media: dict = {}
    if sample.image is not None:
        media["image"] = sample.image
    if sample.video is not None:
        media["video"] = sample.video
    if sample.image_format is not None:
        media["image_format"] = sample.image_format
    return media


def llava_record(sample_id: str, sample: Sample) -> dict:
    return {"id": sample_id, **_media(sample), "conversations": sample.conversations}


def eval_record(sample_id: str, task: str, sample: Sample, choices: Sequence[str]) -> dict:
    """An eval line; "chance" is filled in by with_chance once the whole split is known."""
    if sample.answer not in choices:
        raise ValueError(f"{sample_id}: answer {sample.answer!r} is not among the task's choices {list(choices)}")
    return {
        "id": sample_id,
        "task": task,
        **_media(sample),
        "conversations": sample.conversations,
        "question": sample.conversations[0]["value"],
        "answer": sample.answer,
        "options": list(sample.options or choices),
        "choices": list(choices),
        "chance": None,
    }


def chance_level(records: Sequence[dict]) -> float:
    """Best accuracy without looking at the inputs: the highest of uniform guessing over the
    task's choices, always answering the split's most common answer, and uniform guessing over
    the answers each question itself offers (e.g. "left or right": 1/2)."""
    choices = records[0]["choices"]
    majority = Counter(r["answer"] for r in records).most_common(1)[0][1] / len(records)
    offered = sum(1 / len(r["options"]) for r in records) / len(records)
    return round(max(1 / len(choices), majority, offered), 4)


def with_chance(records: list[dict]) -> list[dict]:
    chance = chance_level(records)
    return [{**r, "chance": chance} for r in records]


def annotation_record(scene: Scene, image: str) -> dict:
    """The symbolic representation of one single-image scene (captions and normalised boxes)."""
    return {
        "image": image,
        "width": scene.side,
        "height": scene.side,
        "captions": captions(scene),
        "boxes": [{"name": obj.name, "bbox": normalized_box(obj, scene.side)} for obj in scene.objects],
    }
