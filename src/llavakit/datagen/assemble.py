"""Journal -> dataset and rejects, in item order: a pure function of the journal and the settings.

Records are LLaVA samples with the response type kept as ``"type"``::

    {"id": "397133_conversation", "image": "000000397133.jpg", "type": "conversation",
     "conversations": [{"from": "human", "value": "<image>\\nWhat ...?"}, {"from": "gpt", "value": "..."},
                       {"from": "human", "value": "Where ...?"}, {"from": "gpt", "value": "..."}]}

A detailed description's question is one of the paraphrased instructions, drawn with
``random.Random(f"{seed}:{image key}")``: the same for an image on every run, whatever finished first.
Questions are unique within an image: a conversation or reasoning question asked before (in item
order) for the same image is dropped; a record left with no question is rejected.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from llavakit.datagen.errors import ReplyError
from llavakit.datagen.items import Item
from llavakit.datagen.journal import JournalContents, JournalEntry
from llavakit.datagen.parse import question_key
from llavakit.datagen.replies import ParsedReply, ReplySettings, parse_reply


@dataclass
class Assembly:
    records: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    pending: list[Item] = field(default_factory=list)  # no journal entry yet
    duplicates_dropped: int = 0
    prompt_tokens: int = 0  # over every journal entry used
    completion_tokens: int = 0


def detail_instruction(instructions: Sequence[str], seed: int, image_key: str) -> str:
    return random.Random(f"{seed}:{image_key}").choice(list(instructions))


def assemble(items: Sequence[Item], journal: JournalContents, instructions: Sequence[str], seed: int,
             settings: ReplySettings) -> Assembly:
    out = Assembly()
    asked: dict[str, set[str]] = {}
    for item in items:
        entry = journal.for_item(item)
        if entry is None:
            out.pending.append(item)
            continue
        out.prompt_tokens += entry.prompt_tokens
        out.completion_tokens += entry.completion_tokens
        try:
            parsed = _parsed(item, entry, settings)
            pairs = _new_questions(item, parsed, asked.setdefault(item.annotation.key, set()), out)
        except ReplyError as err:
            out.rejects.append(reject_record(item, err.reason, entry.text))
            continue
        if item.kind == "detail":
            pairs = [(detail_instruction(instructions, seed, item.annotation.key), pairs[0][1])]
        out.records.append(llava_record(item, pairs))
    return out


def _parsed(item: Item, entry: JournalEntry, settings: ReplySettings) -> ParsedReply:
    if entry.outcome == "refused":
        raise ReplyError(f"the endpoint refused the request ({entry.error})")
    return parse_reply(item.kind, entry.text, entry.finish_reason, settings)


def _new_questions(item: Item, parsed: ParsedReply, asked: set[str], out: Assembly) -> list[tuple[str, str]]:
    out.duplicates_dropped += parsed.duplicates_dropped
    if item.kind == "detail":
        return list(parsed.pairs)
    fresh = [(q, a) for q, a in parsed.pairs if question_key(q) not in asked]
    out.duplicates_dropped += len(parsed.pairs) - len(fresh)
    if not fresh:
        raise ReplyError("every question was already asked about this image")
    asked.update(question_key(q) for q, _ in fresh)
    return fresh


def llava_record(item: Item, pairs: Sequence[tuple[str, str]]) -> dict:
    turns = []
    for index, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<image>\n{question}" if index == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return {"id": item.record_id, "image": item.annotation.image, "type": item.kind, "conversations": turns}


def reject_record(item: Item, reason: str, reply: str | None) -> dict:
    return {"id": item.record_id, "image": item.annotation.image, "type": item.kind, "reason": reason,
            "reply": reply}
