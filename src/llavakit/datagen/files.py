"""Files that survive a crash: atomic rewrites, append-only JSONL with torn-line repair, a run lock."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from typing_extensions import Self

from llavakit.datagen.errors import DatagenError
from llavakit.utils.atomic import atomic_write_text  # noqa: F401 (re-exported)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that a killed writer left without its newline; returns the bytes removed."""
    if not path.exists():
        return 0
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _last_newline_end(handle, size)
        handle.truncate(keep)
        return size - keep


def _last_newline_end(handle: IO[bytes], size: int, block: int = 1 << 16) -> int:
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, object) per line; a line that is not JSON yields (line, None)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, None


class AppendOnlyJsonl:
    """One JSON object per line, each flushed and fsynced as written: a crash loses nothing written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_torn_tail(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close() / __exit__

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLock:
    """An exclusive lock next to an output, so two runs never append to the same files."""

    def __init__(self, output: str | Path):
        output = Path(output)
        self.path = output.parent / f".{output.name}.lock"  # left in place: unlinking races a waiting run
        self._handle: IO[str] | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise DatagenError(f"{self.path}: another run is writing this output; wait for it or stop it") from None
        return self

    def __exit__(self, *exc) -> None:
        assert self._handle is not None
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
