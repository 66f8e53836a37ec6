"""ReCap (seed 003): detailed captions from a llavakit model, written as stage-1.5 LLaVA data.

Images go through ``Llava.generate`` in batches, in input order. Each batch's records are appended
(and fsynced) to the output as soon as it is done, so a rerun skips every image already in the output
or the rejects file and the finished file is the same however often the job was stopped. A record::

    {"id": "a/b.png", "image": "a/b.png",
     "conversations": [{"from": "human", "value": "<image>\\nPlease generate detailed descriptions of the given image."},
                       {"from": "gpt", "value": "The image shows ..."}]}

Refused, into ``OUT.rejects.jsonl`` with the reason: images that cannot be read, empty captions,
and (unless ``keep_truncated``) captions cut by ``max_new_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from llavakit.datagen.errors import DatagenError
from llavakit.datagen.files import AppendOnlyJsonl, RunLock, read_jsonl
from llavakit.datagen.images import ImageRef, ImageSet, list_images
from llavakit.errors import LlavakitError

RECAP_PROMPT = "Please generate detailed descriptions of the given image."


@dataclass(frozen=True)
class RecaptionSettings:
    images: str  # a folder, a .txt list, or a LLaVA .json / .jsonl file
    output: str  # OUT.jsonl; OUT.rejects.jsonl goes next to it
    prompt: str = RECAP_PROMPT
    image_folder: str | None = None  # root of relative paths in a list file
    batch_size: int = 8
    max_new_tokens: int = 384
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    keep_truncated: bool = False
    limit: int | None = None  # first N images
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise DatagenError("batch_size and max_new_tokens must be at least 1")
        if "<image>" in self.prompt:
            raise DatagenError("the prompt must not contain <image>: it is placed before the prompt")


@dataclass
class RecaptionSummary:
    output: Path
    rejects: Path
    image_root: Path
    images: int = 0
    already_done: int = 0
    written: int = 0
    rejected: int = 0
    truncated_kept: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


def rejects_path(output: str | Path) -> Path:
    output = Path(output)
    return Path(f"{output.with_suffix('') if output.suffix == '.jsonl' else output}.rejects.jsonl")


def recaption(llava, settings: RecaptionSettings) -> RecaptionSummary:
    """Caption every image of ``settings.images`` not yet in the output; returns what was done."""
    image_set = list_images(settings.images, settings.image_folder)
    refs = image_set.refs[:settings.limit] if settings.limit is not None else image_set.refs
    output = Path(settings.output)
    if output.suffix != ".jsonl":
        raise DatagenError(f"{output}: the output must be a .jsonl file")
    summary = RecaptionSummary(output, rejects_path(output), image_set.root, images=len(refs))
    start = time.monotonic()
    with RunLock(output), AppendOnlyJsonl(output) as records, AppendOnlyJsonl(summary.rejects) as rejects:
        done = _finished_ids(output) | _finished_ids(summary.rejects)
        todo = [r for r in refs if r.id not in done]
        summary.already_done = len(refs) - len(todo)
        bar = tqdm(total=len(todo), desc="recaption", unit="img", disable=not settings.progress, dynamic_ncols=True)
        try:
            for begin in range(0, len(todo), settings.batch_size):
                batch = todo[begin:begin + settings.batch_size]
                for kind, row in _caption_batch(llava, batch, image_set, settings, summary):
                    (records if kind == "record" else rejects).append(row)
                bar.update(len(batch))
        finally:
            bar.close()
    summary.seconds = time.monotonic() - start
    return summary


def _finished_ids(path: Path) -> set[str]:
    return {str(r["id"]) for _, r in read_jsonl(path) if isinstance(r, dict) and "id" in r}


def _caption_batch(llava, batch: Sequence[ImageRef], image_set: ImageSet, settings: RecaptionSettings,
                   summary: RecaptionSummary) -> list[tuple[str, dict]]:
    """(kind, row) per image in input order: kind "record" or "reject"."""
    from llavakit.processing.image import open_image

    rows: dict[str, tuple[str, dict]] = {}
    ready: list[tuple[ImageRef, object]] = []
    for ref in batch:
        try:
            ready.append((ref, open_image(ref.path, llava.config.visual.max_image_pixels, ref.id)))
        except LlavakitError as err:
            rows[ref.id] = ("reject", _reject(ref, str(err), summary))
    for ref, text, finish in _generate(llava, ready, settings):
        rows[ref.id] = _row(ref, text, finish, settings, summary)
    return [rows[ref.id] for ref in batch]


def _generate(llava, ready: list, settings: RecaptionSettings):
    """(ref, text or error, finish_reason or None); a failing batch is retried one image at a time."""
    if not ready:
        return []
    conversations = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": settings.prompt}]}]
                     for _, image in ready]
    options = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
               "top_p": settings.top_p, "seed": settings.seed}
    try:
        outputs = llava.generate(conversations, **options)
        return [(ref, out.text, out.finish_reason) for (ref, _), out in zip(ready, outputs)]
    except LlavakitError as err:
        if len(ready) == 1:
            return [(ready[0][0], str(err), None)]
        return [row for one in ready for row in _generate(llava, [one], settings)]


def _row(ref: ImageRef, text: str, finish: str | None, settings: RecaptionSettings,
         summary: RecaptionSummary) -> tuple[str, dict]:
    caption = text.strip()
    if finish is None:
        return "reject", _reject(ref, f"generation failed: {text}", summary)
    if not caption:
        return "reject", _reject(ref, "empty caption", summary)
    if finish == "length":
        if not settings.keep_truncated:
            return "reject", _reject(ref, f"truncated at max_new_tokens={settings.max_new_tokens}", summary, caption)
        summary.truncated_kept += 1
    summary.written += 1
    return "record", {"id": ref.id, "image": ref.image, "conversations": [
        {"from": "human", "value": f"<image>\n{settings.prompt}"}, {"from": "gpt", "value": caption}]}


def _reject(ref: ImageRef, reason: str, summary: RecaptionSummary, caption: str | None = None) -> dict:
    summary.rejected += 1
    key = reason.split(":")[0]
    summary.reasons[key] = summary.reasons.get(key, 0) + 1
    return {"id": ref.id, "image": ref.image, "reason": reason, "caption": caption}
