"""Stream image-text pairs from LLaVA JSON (one array), LLaVA JSONL or plain image-caption JSONL.

Every record carries the byte offset just past it, so a run can stop after any record and resume
with ``iter_records(path, offset, line)`` without reading what came before. A JSON array is parsed
element by element from a bounded buffer, so neither format needs to fit in memory.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llavakit.curate.errors import CurationError

_BOM = b"\xef\xbb\xbf"
_WS = " \t\r\n"
_PLACEHOLDER = re.compile(r"<image>|<video>")
_ASSISTANT = ("gpt", "assistant")
_READ = 1 << 20


@dataclass(frozen=True)
class Record:
    value: dict
    raw: bytes | None  # the JSONL line without its newline; None for an element of a JSON array
    end: int  # byte offset just past the record (and, for JSONL, its newline)
    line: int  # 1-based line where the record starts
    next_line: int  # line number at ``end``: where a resumed read starts counting


def detect_format(path: str | Path) -> str:
    """ "array" for a JSON array, "jsonl" for JSON lines (also for an empty file)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        while True:
            stripped = head.removeprefix(_BOM).lstrip()
            if stripped or len(head) < 4096:
                break
            head = f.read(4096)  # a long run of leading white space
            if not head:
                break
    if not stripped or stripped[:1] == b"{":
        return "jsonl"
    if stripped[:1] == b"[":
        return "array"
    raise CurationError(f"{path}: expected a JSON array of records or JSON lines of objects, found {stripped[:20]!r}")


def iter_records(path: str | Path, offset: int = 0, line: int = 1) -> Iterator[Record]:
    """Records from ``offset`` (0, or a record's ``end``) on, each a JSON object."""
    if detect_format(path) == "array":
        yield from _iter_array(path, offset, line)
    else:
        yield from _iter_jsonl(path, offset, line)


def _check_object(path, line: int, value) -> dict:
    if not isinstance(value, dict):
        raise CurationError(f"{path}:{line}: expected a JSON object per record, got {type(value).__name__}")
    return value


def _iter_jsonl(path, offset: int, line: int) -> Iterator[Record]:
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        for raw in f:
            start_line, pos = line, pos + len(raw)
            line += 1
            if offset == 0 and start_line == 1:
                raw = raw.removeprefix(_BOM)
            body = raw.rstrip(b"\r\n")
            if not body.strip():
                continue
            try:
                value = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CurationError(f"{path}:{start_line}: not valid JSON ({e})") from None
            yield Record(_check_object(path, start_line, value), body, pos, start_line, line)


class _ArrayReader:
    """A str window on a UTF-8 file; ``offset`` and ``line`` are those of ``buf[pos]``, the next unread character."""

    def __init__(self, path, f, offset: int, line: int):
        self.path, self.f, self.offset, self.line = path, f, offset, line
        self.buf, self.pos, self.eof = "", 0, False
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def fill(self) -> bool:
        """Read more; False at end of file."""
        if self.eof:
            return False
        data = self.f.read(_READ)
        self.eof = not data
        try:
            text = self._decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as e:
            # lines before the bad byte: the unread window, then the new bytes up to it
            line = self.line + self.buf.count("\n", self.pos) + data[: max(e.start, 0)].count(b"\n")
            raise CurationError(f"{self.path}:{line}: not UTF-8 ({e.reason})") from None
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return bool(data)

    def advance(self, end: int) -> None:
        """Consume ``buf[pos:end]``, keeping byte offset and line number in step."""
        part = self.buf[self.pos : end]
        self.offset += len(part.encode("utf-8"))
        self.line += part.count("\n")
        self.pos = end

    def peek(self) -> str:
        """Next non-white-space character (consumed white space), '' at end of file."""
        while True:
            i = self.pos
            while i < len(self.buf) and self.buf[i] in _WS:
                i += 1
            self.advance(i)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""


def _iter_array(path, offset: int, line: int) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        f.seek(offset)
        r = _ArrayReader(path, f, offset, line)
        if offset == 0:
            head = f.read(len(_BOM))
            if head != _BOM:
                f.seek(0)
            else:
                r.offset = len(_BOM)
            if r.peek() != "[":
                raise CurationError(f"{path}:{r.line}: expected '[' to open the JSON array")
            r.advance(r.pos + 1)
            first = True
        else:
            first = False  # resuming just past an element
        while True:
            c = r.peek()
            if c == "]":
                r.advance(r.pos + 1)
                if r.peek():
                    raise CurationError(f"{path}:{r.line}: unexpected data after the JSON array")
                return
            if not first:
                if c != ",":
                    raise CurationError(
                        f"{path}:{r.line}: expected ',' or ']' between records, found {c!r}"
                        if c
                        else f"{path}:{r.line}: the JSON array is not closed"
                    )
                r.advance(r.pos + 1)
                c = r.peek()
            if not c:
                raise CurationError(f"{path}:{r.line}: the JSON array is not closed")
            while True:
                try:
                    value, end = decoder.raw_decode(r.buf, r.pos)
                    if end < len(r.buf) or r.eof:
                        break  # a value ending exactly at the buffer end might continue (a number)
                except json.JSONDecodeError as e:
                    if r.eof:
                        raise CurationError(
                            f"{path}:{r.line + r.buf.count(chr(10), r.pos, e.pos)}: not valid JSON ({e.msg})"
                        ) from None
                r.fill()  # the value runs past the window: read more and parse again
            start_line = r.line
            r.advance(end)
            first = False
            yield Record(_check_object(path, start_line, value), None, r.offset, start_line, r.line)


def caption_text(record: dict, text: str = "gpt", caption_key: str = "caption") -> str | None:
    """The text to match for one pair, or None when the record has none.

    LLaVA records (with ``conversations``): the assistant turns (``text="gpt"``, the caption in
    stage-1 data; the human turns are instructions shared by many samples) or every turn
    (``text="all"``), placeholders removed. Other records: ``record[caption_key]``, else ``"text"``.
    """
    conv = record.get("conversations")
    if conv is not None:
        if not isinstance(conv, list):
            return None
        parts = [
            t.get("value", "") for t in conv if isinstance(t, dict) and (text == "all" or t.get("from") in _ASSISTANT)
        ]
        return _PLACEHOLDER.sub(" ", " ".join(p for p in parts if isinstance(p, str)))
    for key in (caption_key, "text"):
        value = record.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return " ".join(value)  # several captions of one image
    return None


def pair_digest(record: dict) -> bytes:
    """Identity of a pair: a hash of its canonical JSON, so the same record gets the same sampling
    decisions whatever file, position, shard or format (JSON or JSONL) it comes from."""
    canon = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=16).digest()


def to_jsonl_line(rec: Record) -> bytes:
    """The record as one JSONL line: JSONL input byte for byte, array elements re-serialized."""
    if rec.raw is not None:
        return rec.raw + b"\n"
    return json.dumps(rec.value, ensure_ascii=False).encode("utf-8") + b"\n"
