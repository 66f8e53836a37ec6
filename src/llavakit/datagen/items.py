"""Work items: one request per (image, response type), in a fixed order, each with a digest.

The digest covers everything that decides the reply (the type's prompt files, the image's context,
model, temperature, max_tokens), so a journal entry is reused only for the very same request: change
a prompt file, the model or an image's annotation and exactly the affected items are requested again.
Messages are built when the request is sent, so a large run holds one context string per image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llavakit.datagen.annotations import ImageAnnotation
from llavakit.datagen.prompts import PromptSet, TypePrompt
from llavakit.datagen.symbolic import symbolic_context


@dataclass(frozen=True)
class Item:
    index: int  # position in the output order: images in file order, types in the order asked
    annotation: ImageAnnotation
    kind: str
    prompt: TypePrompt
    context: str  # the symbolic representation: the last user turn
    digest: str

    def messages(self) -> list[dict]:
        return self.prompt.messages(self.context)

    @property
    def key(self) -> str:
        return f"{self.annotation.key}/{self.kind}"

    @property
    def record_id(self) -> str:
        return f"{self.annotation.key}_{self.kind}"


def request_digest(prompt_digest: str, context: str, sampling: dict) -> str:
    text = json.dumps({"sampling": sampling, "prompt": prompt_digest, "context": context}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def plan_items(annotations: Sequence[ImageAnnotation], kinds: Sequence[str], prompts: PromptSet,
               sampling: dict) -> tuple[list[Item], list[ImageAnnotation]]:
    """Items in output order, and the images left out because they have neither captions nor boxes."""
    items, empty = [], []
    prompt_digests = {kind: prompts.types[kind].digest() for kind in kinds}
    for annotation in annotations:
        if annotation.is_empty:
            empty.append(annotation)
            continue
        context = symbolic_context(annotation)
        for kind in kinds:
            digest = request_digest(prompt_digests[kind], context, sampling)
            items.append(Item(len(items), annotation, kind, prompts.types[kind], context, digest))
    return items, empty


@dataclass(frozen=True)
class OutputPaths:
    """``OUT.jsonl`` (the dataset) and its companions, all next to it."""

    dataset: Path
    rejects: Path
    journal: Path

    @classmethod
    def for_output(cls, output: str | Path) -> OutputPaths:
        output = Path(output)
        stem = output.with_suffix("") if output.suffix == ".jsonl" else output
        return cls(output, Path(f"{stem}.rejects.jsonl"), Path(f"{stem}.journal.jsonl"))
