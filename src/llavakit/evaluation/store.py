"""Where an evaluation run keeps its predictions, so that a crash loses nothing already predicted.

Layout under the run's ``predictions/`` folder, per task:

- ``<task>.jsonl``: the predictions, one line per sample. An unsharded run appends to it batch by
  batch (flush + fsync); when the task is complete it is rewritten in data order with per-sample
  scores.
- ``<task>.shard-<i>-of-<N>.jsonl``: what process i of N predicted (``--shard i/N`` or the
  torch.distributed ``RANK``/``WORLD_SIZE``); merged into ``<task>.jsonl`` by whichever process
  finds the task complete.

A restart reads every one of these files and skips the ids already there, whatever the sharding was.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError
from llavakit.utils.atomic import atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)


class StoreError(LlavakitError):
    """A predictions file that is corrupt in a way a crash cannot explain."""


@dataclass(frozen=True)
class Shard:
    """This process's share of every task: the samples whose index % count == rank."""

    rank: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.rank < self.count:
            raise ValueError(f"shard {self.rank}/{self.count}: need 0 <= i < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"``, for example ``"0/4"``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"shard {text!r}: expected i/N, for example 0/4")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Shard:
        """torchrun's ``RANK`` and ``WORLD_SIZE``; one shard when they are not set."""
        environ = os.environ if environ is None else environ
        return cls(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)))

    def owns(self, index: int) -> bool:
        return index % self.count == self.rank

    def __str__(self) -> str:
        return f"{self.rank}/{self.count}"


def json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Records of a predictions file. A last line without its newline is what a kill during a write
    leaves: it is ignored (and cut off before the next append). Any other bad line is an error."""
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    complete = data.split("\n")[:-1]  # drops "" after the final newline, or a torn last line
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise StoreError(f"{path}:{number}: invalid JSON ({err.msg}); delete the file to predict again") from None
        if not isinstance(record, dict) or "id" not in record:
            raise StoreError(f"{path}:{number}: not a predictions line (a JSON object with an 'id')")
        records.append(record)
    return records


def _cut_torn_line(path: Path) -> None:
    """Cut off a last line without its newline (a write killed halfway) before appending."""
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append records as JSON lines with a single write, flushed and fsynced before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _cut_torn_line(path)
    text = "".join(json_line(r) for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


class PredictionStore:
    """The predictions files of one task in one run."""

    def __init__(self, directory: str | Path, task: str, shard: Shard = Shard()) -> None:
        self.directory = Path(directory)
        self.task = task
        self.merged = self.directory / f"{task}.jsonl"
        part = f"{task}.shard-{shard.rank}-of-{shard.count}.jsonl"
        self.part = self.merged if shard.count == 1 else self.directory / part

    def files(self) -> list[Path]:
        return [self.merged, *sorted(self.directory.glob(f"{self.task}.shard-*-of-*.jsonl"))]

    def read(self) -> dict[str, dict[str, Any]]:
        """Every prediction made so far in any of the task's files, by id (the first one wins)."""
        found: dict[str, dict[str, Any]] = {}
        for path in self.files():
            for record in read_jsonl_tolerant(path):
                found.setdefault(str(record["id"]), record)
        return found

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add one batch to this process's file (see `append_jsonl`)."""
        append_jsonl(self.part, records)

    def write_merged(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replace ``<task>.jsonl`` atomically with the complete, ordered predictions."""
        atomic_write_text(self.merged, "".join(json_line(r) for r in records))
