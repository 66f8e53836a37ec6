"""File helpers: transparent gzip reading and atomic writes (temp file in the same folder + os.replace)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO, Any

from llavakit.utils.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)
from llavakit.utils.atomic import atomic_write_json as shared_json


def open_text(path: str | Path) -> IO[str]:
    """Open a UTF-8 text file for reading, gunzipping it when the name ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    shared_json(path, obj, indent)
