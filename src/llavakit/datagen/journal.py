"""The journal: every finished request, appended (and fsynced) the moment it finishes.

It is the run's only state. A rerun reads it and sends only the requests it lacks; a kill loses at
most the requests in flight (a line cut short by the kill is removed before appending). The dataset
and the rejects file are rebuilt from it, so they never depend on the order requests finished in.

One line per finished request::

    {"item": "397133/conversation", "digest": "...", "outcome": "reply" | "refused",
     "text": "...", "finish_reason": "stop", "error": null,
     "prompt_tokens": 812, "completion_tokens": 301, "attempts": 2, "seconds": 3.4}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from llavakit.datagen.client import ChatResult, Refused
from llavakit.datagen.files import read_jsonl
from llavakit.datagen.items import Item


@dataclass(frozen=True)
class JournalEntry:
    item: str
    digest: str
    outcome: str  # "reply": the endpoint answered; "refused": it refused the request for good
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def entry_for(item: Item, result: ChatResult | Refused) -> JournalEntry:
    if isinstance(result, Refused):
        return JournalEntry(item.key, item.digest, "refused", error=f"HTTP {result.status}: {result.message}",
                            attempts=result.attempts, seconds=round(result.seconds, 3))
    return JournalEntry(item.key, item.digest, "reply", result.text, result.finish_reason, None,
                        result.prompt_tokens, result.completion_tokens, result.attempts, round(result.seconds, 3))


@dataclass
class JournalContents:
    entries: dict[tuple[str, str], JournalEntry]  # (item key, digest) -> the last entry written
    unreadable_lines: int = 0

    def for_item(self, item: Item) -> JournalEntry | None:
        return self.entries.get((item.key, item.digest))


def read_journal(path: Path) -> JournalContents:
    contents = JournalContents({})
    for _, record in read_jsonl(path):
        try:
            entry = JournalEntry(**record)
        except TypeError:  # not an object, or other keys: a line we do not understand
            contents.unreadable_lines += 1
            continue
        contents.entries[(entry.item, entry.digest)] = entry
    return contents
