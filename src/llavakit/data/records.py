"""LLaVA-format records -> validated samples: normalised turns and resolved media paths.

A record is ``{"id", "image": path | [paths], "video": path, "conversations": [...]}`` with turns
as ``{"from": "human"|"gpt"|"system", "value"}`` or ``{"role", "content"}`` (content a string or a
list of ``text`` / ``image`` / ``video`` parts). Parsing opens no file, so it is cheap enough to
run on every record up front; it only resolves symlinks on media paths.

Media paths must stay inside their media folder (``image_folder`` / ``video_folder``, else the data
file's folder): a record naming ``../../etc/passwd``, an absolute path elsewhere or a symlink that
leads out is refused unless the source allows it (``allow_outside_media_root``), so a dataset from
elsewhere cannot make training, ``llavakit data`` or the logs read files it was not given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from llavakit.data.errors import MALFORMED, OUTSIDE_MEDIA_ROOT, PLACEHOLDER_MISMATCH, DataError

Role = Literal["system", "user", "assistant"]
Modality = Literal["text", "image", "multi_image", "video"]

ROLES: dict[str, Role] = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True, eq=False)
class Entry:
    """One raw record and where it came from. Holds paths and text only, never pixels."""

    record: dict[str, Any]
    data_file: str
    position: int  # 1-based line (JSONL) or list index + 1 (JSON)
    image_folder: str | None = None
    video_folder: str | None = None
    dataset: str = ""
    allow_outside_media_root: bool = False  # media paths may leave their folder (opt-in, per source)
    where: str | None = None  # how errors name the record when "file:line" does not (Parquet row, tar member)

    @property
    def sample_id(self) -> str:
        raw = self.record.get("id") if hasattr(self.record, "get") else None
        return str(raw) if raw is not None else f"{Path(self.data_file).name}#{self.position}"

    @property
    def location(self) -> str:
        return self.where or f"{self.data_file}:{self.position}"

    def error(self, code: str, reason: str, media_file: str | None = None) -> DataError:
        return DataError(self.sample_id, self.location, code, reason, media_file)


@dataclass(frozen=True, eq=False)
class Embedded:
    """An image or video carried inside the data (Parquet bytes, a tar member) instead of a path.

    ``name`` says where it lives (``shard.parquet row 12``, ``shard.tar member 42.jpg``) for errors
    and logs; it is decoded from ``data`` through the same checked path as a file.
    """

    name: str
    data: bytes = field(repr=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str


@dataclass(frozen=True)
class Sample:
    """A validated sample: placeholders in the text match ``images`` and ``video`` in number."""

    sample_id: str
    turns: tuple[Turn, ...]
    images: tuple[Path | Embedded, ...] = ()
    video: Path | Embedded | None = None
    image_format: str | None = None  # "interleaved" or "front" when the record says how it is written
    tokens: tuple[str, str] = field(default=("<image>", "<video>"), repr=False)

    @property
    def modality(self) -> Modality:
        if self.video is not None:
            return "video"
        if len(self.images) > 1:
            return "multi_image"
        return "image" if self.images else "text"


def parse_entry(
    entry: Entry, image_token: str = "<image>", video_token: str = "<video>", allow_outside_media_root: bool = False
) -> Sample:
    """Validate a record; every problem is a DataError naming the sample, file and field.
    Media outside their folder are refused unless ``allow_outside_media_root`` or the entry allows them."""
    record = entry.record
    if hasattr(record, "reason"):  # a line the reader could not parse
        raise entry.error(MALFORMED, record.reason)
    if not isinstance(record, dict):
        raise entry.error(MALFORMED, f"a record must be a JSON object, got {type(record).__name__}")
    turns = _turns(entry, record, image_token, video_token)
    confine = not (allow_outside_media_root or entry.allow_outside_media_root)
    images = tuple(_resolve(entry, p, entry.image_folder, "image", confine) for p in _image_list(entry, record))
    video = _resolve(entry, record["video"], entry.video_folder, "video", confine) if record.get("video") else None
    turns = _check_placeholders(entry, turns, len(images), video is not None, image_token, video_token)
    return Sample(entry.sample_id, turns, images, video, record.get("image_format"), (image_token, video_token))


def _turns(entry: Entry, record: dict, image_token: str, video_token: str) -> tuple[Turn, ...]:
    raw = record.get("conversations", record.get("messages"))
    if not isinstance(raw, list) or not raw:
        raise entry.error(MALFORMED, "'conversations' is missing, empty or not a list")
    turns = tuple(_turn(entry, i, item, image_token, video_token) for i, item in enumerate(raw))
    _check_order(entry, turns)
    return turns


def _turn(entry: Entry, index: int, item: Any, image_token: str, video_token: str) -> Turn:
    if not isinstance(item, dict):
        raise entry.error(MALFORMED, f"conversations[{index}] must be an object, got {type(item).__name__}")
    if "from" in item:
        role_name, content = item.get("from"), item.get("value")
    elif "role" in item:
        role_name, content = item.get("role"), item.get("content")
    else:
        raise entry.error(MALFORMED, f"conversations[{index}] needs 'from'/'value' or 'role'/'content'")
    role = ROLES.get(str(role_name).lower())
    if role is None:
        raise entry.error(MALFORMED, f"conversations[{index}]: unknown role {role_name!r}; use {sorted(ROLES)}")
    text = _content_text(entry, index, content, image_token, video_token)
    if not text.strip():
        raise entry.error(MALFORMED, f"conversations[{index}] ({role}) is empty")
    return Turn(role, text)


def _content_text(entry: Entry, index: int, content: Any, image_token: str, video_token: str) -> str:
    """A string, or OpenAI-style parts joined with placeholders where the media parts are."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise entry.error(MALFORMED, f"conversations[{index}]: the text must be a string or a list of parts")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind in ("image", "video"):
            pieces.append((image_token if kind == "image" else video_token) + "\n")
        else:
            raise entry.error(MALFORMED, f"conversations[{index}]: content part {part!r} is not text, image or video")
    return "".join(pieces)


def _check_order(entry: Entry, turns: tuple[Turn, ...]) -> None:
    """Optional system first, then user/assistant alternating, ending with an assistant answer."""
    body = turns[1:] if turns[0].role == "system" else turns
    for index, turn in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            position = index + (len(turns) - len(body))
            raise entry.error(
                MALFORMED, f"conversations[{position}] is a {turn.role} turn where the {expected} turn belongs "
                "(after an optional system turn, user and assistant turns alternate)"
            )
    if not body or body[-1].role != "assistant":
        raise entry.error(MALFORMED, "the conversation has no assistant answer at the end (nothing to train on)")


def _image_list(entry: Entry, record: dict) -> list[str]:
    images = record.get("image")
    if images is None:
        return []
    images = [images] if isinstance(images, (str, Embedded)) else images
    if not isinstance(images, list) or not all(isinstance(p, Embedded) or (isinstance(p, str) and p) for p in images):
        raise entry.error(MALFORMED, f"'image' must be a path or a list of paths, got {record.get('image')!r}")
    return images


def _resolve(entry: Entry, path: Any, folder: str | None, kind: str, confine: bool) -> Path | Embedded:
    if isinstance(path, Embedded):
        return path  # inside the data itself: there is no folder to leave
    if not isinstance(path, str) or not path:
        raise entry.error(MALFORMED, f"'{kind}' must be a non-empty path, got {path!r}")
    base = Path(folder) if folder else Path(entry.data_file).parent
    resolved = Path(path) if Path(path).is_absolute() else base / path
    if confine and not _inside(resolved, base):
        where = f"{kind}_folder {base}" if folder else f"the data file's folder {base}"
        raise entry.error(
            OUTSIDE_MEDIA_ROOT,
            f"'{kind}' path {path!r} leads outside {where} (a '..', an absolute path or a symlink); "
            "set allow_outside_media_root: true on this data source to allow it",
            str(resolved),
        )
    return resolved


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` stays in ``root`` once '..' and symlinks (of both) are resolved."""
    real_root = _real_folder(str(root))
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


@lru_cache(maxsize=256)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)  # a dataset has a few folders and many samples: resolve each once


def _check_placeholders(
    entry: Entry, turns: tuple[Turn, ...], n_images: int, has_video: bool, image_token: str, video_token: str
) -> tuple[Turn, ...]:
    for index, turn in enumerate(turns):
        if turn.role == "assistant" and (image_token in turn.text or video_token in turn.text):
            raise entry.error(PLACEHOLDER_MISMATCH, f"conversations[{index}] (assistant) contains a placeholder; "
                              "images and videos belong in user turns")
    text = "".join(t.text for t in turns)
    found_images, found_videos = text.count(image_token), text.count(video_token)
    if has_video and not n_images and not found_videos and found_images == 1:
        # LLaVA-Video data marks the video with <image>; it is the video's placeholder.
        turns = tuple(Turn(t.role, t.text.replace(image_token, video_token)) for t in turns)
        found_images, found_videos = 0, 1
    if found_images != n_images or found_videos != int(has_video):
        raise entry.error(
            PLACEHOLDER_MISMATCH,
            f"the text has {found_images} {image_token} and {found_videos} {video_token} placeholders but the record "
            f"gives {n_images} images and {int(has_video)} videos",
        )
    return turns
