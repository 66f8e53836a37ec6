"""Predictions files: JSON Lines, one JSON object per sample (format in docs/evaluation_metrics.md).
`llavakit score` reads them; the model-driven evaluation writes them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError


class PredictionsFormatError(LlavakitError):
    """A predictions file is malformed; `line` is 1-based (None for file-level problems)."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.message = str(path), line, message


@dataclass(frozen=True)
class Predictions:
    """The records of a predictions file and the 1-based line each came from."""

    records: list[dict[str, Any]]
    lines: list[int]


def read_predictions(path: str | Path) -> Predictions:
    """Read a JSONL predictions file; blank lines are skipped. Raises `PredictionsFormatError` naming
    the line for invalid JSON or a line that is not an object, and for a file without records."""
    records, lines = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PredictionsFormatError(path, number, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise PredictionsFormatError(path, number, f"expected a JSON object, got {type(record).__name__}")
            records.append(record)
            lines.append(number)
    if not records:
        raise PredictionsFormatError(path, None, "no records (the file is empty)")
    return Predictions(records, lines)


def write_predictions(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records as JSONL (UTF-8, one object per line); returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
