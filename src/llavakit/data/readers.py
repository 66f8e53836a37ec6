"""Readers for LLaVA JSON (a list of records) and JSONL (one record a line) files.

A JSONL line that is not UTF-8 or not valid JSON becomes an entry that fails validation, so the
error policy (fail or skip-and-report) treats it like any other bad sample, named by file and line.
A JSON file that does not decode or parse has no samples to skip: that is always an error, naming
the file and the line.
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
    dataset: str | None = None, allow_outside_media_root: bool = False,
) -> list[Entry]:
    """Entries of a ``.json`` or ``.jsonl`` file; media paths resolve against the folders (and must
    stay inside them unless ``allow_outside_media_root``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(WHOLE_FILE, str(path), MALFORMED, "data file not found")
    folders = dict(
        image_folder=str(image_folder) if image_folder else None,
        video_folder=str(video_folder) if video_folder else None,
        dataset=dataset or path.stem,
        allow_outside_media_root=allow_outside_media_root,
    )
    if path.suffix == ".jsonl":
        return [Entry(record, str(path), line, **folders) for line, record in jsonl_records(path)]
    return [Entry(record, str(path), index + 1, **folders) for index, record in enumerate(_json_records(path))]


def _json_records(path: Path) -> list:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(WHOLE_FILE, str(path), MALFORMED, f"not UTF-8 text: {_not_utf8(data, err)}") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(WHOLE_FILE, str(path), MALFORMED, f"not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise DataError(WHOLE_FILE, str(path), MALFORMED, f"a LLaVA JSON file holds a list of records, "
                        f"got {type(records).__name__} (use .jsonl for one record per line)")
    return records


def jsonl_records(path: Path):
    """(line number, record or BadRecord); lines are split on bytes, so one undecodable line spoils only itself."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield line_number, parse_line(raw, line_number)


def parse_line(raw: bytes, line_number: int):
    """One JSONL line's record, or a BadRecord saying why it is not one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(f"line is not UTF-8 text: {_not_utf8(raw, err, line_number)}")
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return BadRecord(f"line is not valid JSON ({err})")


def _not_utf8(data: bytes, err: UnicodeDecodeError, first_line: int = 1) -> str:
    """Where the first undecodable byte is: line and column (1-based, in bytes) and its value."""
    line = data.count(b"\n", 0, err.start) + first_line
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return f"byte 0x{data[err.start]:02x} at line {line}, column {column} ({err.reason})"
