"""Controls that prove the model looks at the images: the same questions, other images.

Each sample of a held-out split (the test split, by default) gets the image of the next sample (a
rotation by one), so the question and the answer distribution are unchanged but the picture no
longer matches. A model that reads its images falls to chance here; one that guesses from the
text alone does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from llavakit.evaluation.task_spec import load_task
from llavakit.utils.atomic import atomic_write_text


def shuffled_images_task(world: Path, task: str, split: str = "test") -> Path:
    """Write ``<split>/<task>_shuffled.jsonl`` and its task YAML into the world; return the YAML path."""
    records = [json.loads(line) for line in (world / split / f"{task}.jsonl").read_text().splitlines() if line]
    images = [r["image"] for r in records]
    for index, record in enumerate(records):
        record["image"] = images[(index + 1) % len(images)]
        record["id"] = f"{record['id']}-shuffled"
    atomic_write_text(world / split / f"{task}_shuffled.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    spec = load_task(f"synth_{task}").model_dump(mode="json", exclude_none=True)
    spec["name"] = f"synth_{task}_shuffled"
    spec["description"] = f"{task} with every image replaced by another sample's (control)"
    spec["data"]["file"] = f"{split}/{task}_shuffled.jsonl"
    spec["data"].pop("splits", None)  # the control has this one file; the task's splits are not shuffled
    path = world / split / f"{task}_shuffled.yaml"
    atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path
