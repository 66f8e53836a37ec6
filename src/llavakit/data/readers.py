"""Readers for LLaVA JSON (a list of records) and JSONL (one record a line) files.

A JSONL line that is not valid JSON becomes an entry that fails validation, so the error policy
(fail or skip-and-report) treats it like any other bad sample. A JSON file that does not parse has
no samples to skip: that is always an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llavakit.data.errors import MALFORMED, DataError
from llavakit.data.records import Entry

WHOLE_FILE = "(whole file)"


@dataclass(frozen=True)
class BadRecord:
    """Stands in for a line that is not a JSON object; validation reports ``reason``."""

    reason: str

    def get(self, key, default=None):  # Entry.sample_id looks up "id"
        return default


def read_llava_file(
    path: str | Path, image_folder: str | Path | None = None, video_folder: str | Path | None = None,
    dataset: str | None = None,
) -> list[Entry]:
    """Entries of a ``.json`` or ``.jsonl`` file; media paths resolve against the folders."""
    path = Path(path)
    if not path.is_file():
        raise DataError(WHOLE_FILE, str(path), MALFORMED, "data file not found")
    folders = dict(
        image_folder=str(image_folder) if image_folder else None,
        video_folder=str(video_folder) if video_folder else None,
        dataset=dataset or path.stem,
    )
    if path.suffix == ".jsonl":
        return [Entry(record, str(path), line, **folders) for line, record in _jsonl_records(path)]
    return [Entry(record, str(path), index + 1, **folders) for index, record in enumerate(_json_records(path))]


def _json_records(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(WHOLE_FILE, str(path), MALFORMED, f"not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise DataError(WHOLE_FILE, str(path), MALFORMED, f"a LLaVA JSON file holds a list of records, "
                        f"got {type(records).__name__} (use .jsonl for one record per line)")
    return records


def _jsonl_records(path: Path):
    with open(path, encoding="utf-8", errors="strict") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_number, BadRecord(f"line is not valid JSON ({err})")
