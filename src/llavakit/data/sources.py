"""Data sources read by index: JSONL, Parquet shards (LLaVA-OneVision-Data) and WebDataset tars.

Training plans global batches from sample indices (``llavakit.train.plan``), so a source must give
any sample by its index, cheaply and without holding the file in memory. Each source builds a
compact index once when opened (numpy arrays, a few bytes a sample) and reads one record at a time:

- JSONL: the byte offset of every line; a record is one ``pread``.
- Parquet (a file or a folder of ``*.parquet`` shards): (file, row group, row) from the footers alone;
  a record reads its row group (a few are kept: neighbours in a shard are often read together).
  The LLaVA-OneVision-Data schema: ``id``, ``image`` (``{"bytes", "path"}``, as Hugging Face
  ``datasets`` writes an Image feature, or a list of them), ``conversations``, ``data_source``;
  an optional ``video`` column in the same struct form.
- WebDataset (a ``.tar`` or a folder of them): the offset and size of every member, grouped by
  sample key (the member name up to the first dot of its base name), kept in the index cache per
  shard; a record reads its members.
  The ``.json`` member holds the record (``conversations``...); image members (``jpg``, ``png``...)
  become its images in the order of their extensions, a video member (``mp4``...) its video.

Media inside the data become :class:`~llavakit.data.records.Embedded` values, decoded through the
same checked path as files. The index depends only on the files, so every process and every resumed
run sees the same samples at the same indices: a resume is exact, and ranks split by index.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llavakit.data.errors import MALFORMED, DataError
from llavakit.data.readers import WHOLE_FILE, BadRecord, parse_line, read_llava_file
from llavakit.data.records import Embedded, Entry
from llavakit.utils.atomic import atomic_write_bytes

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm"}
VIDEO_EXTENSIONS = {"mp4", "avi", "webm", "mkv", "mov", "m4v"}
ROW_GROUPS_KEPT = 4  # decoded row groups kept per Parquet source


@dataclass(frozen=True)
class Origin:
    """What every entry of a source shares: its folders, dataset name and media policy."""

    image_folder: str | None = None
    video_folder: str | None = None
    dataset: str = ""
    allow_outside_media_root: bool = False

    def entry(self, record: Any, data_file: str, position: int, where: str | None = None) -> Entry:
        return Entry(record, data_file, position, self.image_folder, self.video_folder, self.dataset,
                     self.allow_outside_media_root, where)


class Source:
    """A file (or folder of shards) whose records are read by index."""

    path: Path
    origin: Origin

    def __len__(self) -> int:
        raise NotImplementedError

    def entry(self, index: int) -> Entry:
        raise NotImplementedError

    def __getstate__(self) -> dict:  # open handles stay in their process (DataLoader workers reopen)
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_open")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class ListSource(Source):
    """Entries already in memory (a LLaVA JSON list, which cannot be read record by record)."""

    def __init__(self, path: Path, entries: list[Entry]):
        self.path, self.entries = path, entries

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, index: int) -> Entry:
        return self.entries[index]


class JsonlSource(Source):
    """One record a line; the index is each line's byte offset and line number."""

    def __init__(self, path: Path, origin: Origin):
        self.path, self.origin = path, origin
        starts, ends, lines = [], [], []
        position = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    starts.append(position)
                    ends.append(position + len(raw))
                    lines.append(number)
                position += len(raw)
        self.starts, self.ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        self.lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def entry(self, index: int) -> Entry:
        if getattr(self, "_open_fd", None) is None:
            self._open_fd = os.open(self.path, os.O_RDONLY)
        start, end = int(self.starts[index]), int(self.ends[index])
        raw = os.pread(self._open_fd, end - start, start)  # pread: no shared file position across forks
        line = int(self.lines[index])
        return self.origin.entry(parse_line(raw, line), str(self.path), line)


def _shards(path: Path, suffix: str) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
        if not found:
            raise DataError(WHOLE_FILE, str(path), MALFORMED, f"the folder holds no {suffix} shard")
        return found
    if not path.is_file():
        raise DataError(WHOLE_FILE, str(path), MALFORMED, "data file not found")
    return [path]


class ParquetSource(Source):
    """Parquet files in the LLaVA-OneVision-Data schema, read a row group at a time."""

    def __init__(self, path: Path, origin: Origin):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(WHOLE_FILE, str(path), MALFORMED, "reading Parquet needs pyarrow: "
                            "pip install 'llavakit[data]'") from None

        self.path, self.origin = path, origin
        self.files = _shards(path, ".parquet")
        group_file, group_index, group_rows, group_first_row = [], [], [], []
        for number, file in enumerate(self.files):
            try:
                metadata = pq.ParquetFile(file).metadata
            except Exception as err:  # pyarrow raises ArrowInvalid, OSError...: all mean "not readable"
                raise DataError(WHOLE_FILE, str(file), MALFORMED, f"not a readable Parquet file ({err})") from None
            first = 0
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                group_file.append(number)
                group_index.append(group)
                group_rows.append(rows)
                group_first_row.append(first)
                first += rows
        self.group_file = np.asarray(group_file, np.int32)
        self.group_index = np.asarray(group_index, np.int32)
        self.group_first_row = np.asarray(group_first_row, np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(np.asarray(group_rows, np.int64))])

    def __len__(self) -> int:
        return int(self.group_start[-1])

    def locate(self, index: int) -> tuple[Path, int, int]:
        """(file, row group, row within the file) of a sample."""
        group = int(np.searchsorted(self.group_start, index, side="right")) - 1
        row = int(self.group_first_row[group]) + index - int(self.group_start[group])
        return self.files[int(self.group_file[group])], int(self.group_index[group]), row

    def _row_group(self, group: int):
        cache = getattr(self, "_open_groups", None)
        if cache is None:
            cache = self._open_groups = OrderedDict()
            self._open_files = {}
        table = cache.get(group)
        if table is not None:
            cache.move_to_end(group)
            return table
        import pyarrow.parquet as pq

        number = int(self.group_file[group])
        handle = self._open_files.get(number)
        if handle is None:
            handle = self._open_files[number] = pq.ParquetFile(self.files[number])
        table = cache[group] = handle.read_row_group(int(self.group_index[group]))
        if len(cache) > ROW_GROUPS_KEPT:
            cache.popitem(last=False)
        return table

    def entry(self, index: int) -> Entry:
        group = int(np.searchsorted(self.group_start, index, side="right")) - 1
        file, row_group, row = self.locate(index)
        where = f"{file} row {row} (row group {row_group})"
        try:
            table = self._row_group(group)
            raw = table.slice(index - int(self.group_start[group]), 1).to_pylist()[0]
        except Exception as err:  # a damaged page: this sample is bad, named by file and row
            return self.origin.entry(BadRecord(f"row cannot be read ({err})"), str(file), row + 1, where)
        return self.origin.entry(_onevision_record(raw, where), str(file), row + 1, where)


def _onevision_record(raw: dict, where: str) -> dict:
    """A Parquet row as a LLaVA record: image structs become Embedded media (or paths)."""
    record = {key: value for key, value in raw.items() if value is not None}
    image = record.get("image")
    if image is not None:
        images = image if isinstance(image, list) else [image]
        converted = [_image_value(item, f"{where} image {i}" if len(images) > 1 else f"{where} image")
                     for i, item in enumerate(images)]
        record["image"] = converted if isinstance(image, list) else converted[0]
    if "video" in record:  # not in OneVision-Data, but a video column in the same struct form reads alike
        record["video"] = _image_value(record["video"], f"{where} video")
    return record


def _image_value(item: Any, name: str) -> Any:
    if isinstance(item, dict):
        if item.get("bytes"):
            return Embedded(name, bytes(item["bytes"]))
        if item.get("path"):
            return item["path"]  # an Image feature that references a file: resolved in image_folder
        return item  # neither: validation names it as a bad image field
    if isinstance(item, bytes):
        return Embedded(name, item)
    return item


class TarSource(Source):
    """WebDataset tar shards: members grouped into samples by key, read by offset.

    Reading every header of a large tar with ``tarfile`` is slow in Python, so each shard's index is kept in the index cache (:func:`index_cache_dir`), keyed by the shard's
    path, size and modification time: every later open, by any rank or resumed run, loads it.
    """

    def __init__(self, path: Path, origin: Origin):
        self.path, self.origin = path, origin
        self.files = _shards(path, ".tar")
        codes: dict[str, int] = {}
        sample_file, sample_first, offsets, sizes, exts, keys, key_starts = [], [], [], [], [], [], []
        members = key_bytes = 0
        for number, file in enumerate(self.files):
            index = _cached_tar_index(file)
            remap = np.asarray([codes.setdefault(str(e), len(codes)) for e in index["extensions"]], np.int16)
            samples = len(index["first"]) - 1
            sample_file.append(np.full(samples, number, np.int32))
            sample_first.append(index["first"][:-1] + members)
            key_starts.append(index["key_starts"][:-1] + key_bytes)
            offsets.append(index["offset"])
            sizes.append(index["size"])
            exts.append(remap[index["ext"]] if len(remap) else index["ext"])
            keys.append(index["keys"].tobytes())
            members += len(index["offset"])
            key_bytes += len(keys[-1])
        self.extensions = list(codes)
        self.sample_file = _joined(sample_file, np.int32)
        self.sample_first = np.append(_joined(sample_first, np.int64), members)
        self.member_offset, self.member_size = _joined(offsets, np.int64), _joined(sizes, np.int64)
        self.member_ext = _joined(exts, np.int16)
        self.keys_blob = b"".join(keys)
        self.key_starts = np.append(_joined(key_starts, np.int64), key_bytes)

    def __len__(self) -> int:
        return len(self.sample_file)

    def key(self, index: int) -> str:
        return self.keys_blob[int(self.key_starts[index]):int(self.key_starts[index + 1])].decode()

    def _read(self, number: int, offset: int, size: int) -> bytes:
        fds = getattr(self, "_open_fds", None)
        if fds is None:
            fds = self._open_fds = {}
        fd = fds.get(number)
        if fd is None:
            fd = fds[number] = os.open(self.files[number], os.O_RDONLY)
        return os.pread(fd, size, offset)

    def entry(self, index: int) -> Entry:
        number = int(self.sample_file[index])
        file, key = self.files[number], self.key(index)
        members = {}
        for m in range(int(self.sample_first[index]), int(self.sample_first[index + 1])):
            extension = self.extensions[int(self.member_ext[m])]
            members[extension] = self._read(number, int(self.member_offset[m]), int(self.member_size[m]))
        where = f"{file} member {key}.json"
        record = _wds_record(members, f"{file} member {key}", where)
        return self.origin.entry(record, str(file), index + 1, where)


def _joined(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def index_cache_dir() -> Path | None:
    """Where tar indexes are kept: ``$LLAVAKIT_INDEX_CACHE`` (empty: no cache), else
    ``$XDG_CACHE_HOME/llavakit/tar-index`` (``~/.cache/...``)."""
    configured = os.environ.get("LLAVAKIT_INDEX_CACHE")
    if configured is not None:
        return Path(configured) if configured else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llavakit" / "tar-index"


def _cached_tar_index(file: Path) -> dict[str, np.ndarray]:
    folder = index_cache_dir()
    stat = file.stat()
    identity = f"{os.path.realpath(file)}\0{stat.st_size}\0{stat.st_mtime_ns}\0v1"
    cached = folder / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.npz" if folder else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: index again and replace it
    index = _index_tar(file)
    if cached is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **index)
        try:
            atomic_write_bytes(cached, buffer.getvalue(), durable=False)
        except OSError:
            pass  # the cache is an optimisation: a read-only home only costs the next open its time
    return index


def _index_tar(file: Path) -> dict[str, np.ndarray]:
    """One shard's samples: first member of each, member offsets, sizes, extension codes, keys."""
    first, offsets, sizes, exts, key_starts = [], [], [], [], []
    keys = bytearray()  # the keys back to back: a str object per sample would cost ~60 bytes more
    codes: dict[str, int] = {}
    previous = None
    try:
        with tarfile.open(file, "r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = _split_member(member.name)
                if key != previous:
                    first.append(len(offsets))
                    key_starts.append(len(keys))
                    keys += key.encode()
                    previous = key
                offsets.append(member.offset_data)
                sizes.append(member.size)
                exts.append(codes.setdefault(extension, len(codes)))
    except (tarfile.TarError, OSError) as err:
        raise DataError(WHOLE_FILE, str(file), MALFORMED, f"not a readable tar file ({err})") from None
    return {"first": np.asarray([*first, len(offsets)], np.int64), "offset": np.asarray(offsets, np.int64),
            "size": np.asarray(sizes, np.int64), "ext": np.asarray(exts, np.int16),
            "extensions": np.asarray(list(codes), dtype=str), "keys": np.frombuffer(bytes(keys), np.uint8),
            "key_starts": np.asarray([*key_starts, len(keys)], np.int64)}


def _split_member(name: str) -> tuple[str, str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), dot, extension.lower()


def _wds_record(members: dict[str, bytes], prefix: str, where: str) -> Any:
    if "json" not in members:
        return BadRecord(f"sample has no .json member (members: {', '.join(sorted(members)) or 'none'})")
    record = parse_line(members["json"], 1)
    if isinstance(record, BadRecord):
        return BadRecord(record.reason.replace("line is", "the .json member is").replace(" at line 1,", ","))
    if not isinstance(record, dict):
        return record  # validation names it
    images = sorted(ext for ext in members if ext.rpartition(".")[2] in IMAGE_EXTENSIONS)
    videos = sorted(ext for ext in members if ext.rpartition(".")[2] in VIDEO_EXTENSIONS)
    if images:
        embedded = [Embedded(f"{prefix}.{ext}", members[ext]) for ext in images]
        record["image"] = embedded[0] if len(embedded) == 1 else embedded
    if videos:
        record["video"] = Embedded(f"{prefix}.{videos[0]}", members[videos[0]])
    return record


def open_source(
    path: str | Path, image_folder: str | Path | None = None, video_folder: str | Path | None = None,
    dataset: str | None = None, allow_outside_media_root: bool = False,
) -> Source:
    """The source for a path: ``.jsonl``, ``.json``, ``.parquet``, ``.tar``, or a folder of Parquet or
    tar shards."""
    path = Path(path)
    origin = Origin(str(image_folder) if image_folder else None, str(video_folder) if video_folder else None,
                    dataset or path.stem, allow_outside_media_root)
    if path.is_dir():
        if any(path.rglob("*.parquet")):
            return ParquetSource(path, origin)
        if any(path.rglob("*.tar")):
            return TarSource(path, origin)
        raise DataError(WHOLE_FILE, str(path), MALFORMED, "the folder holds no .parquet or .tar shard")
    if not path.is_file():
        raise DataError(WHOLE_FILE, str(path), MALFORMED, "data file not found")
    if path.suffix == ".jsonl":
        return JsonlSource(path, origin)
    if path.suffix == ".parquet":
        return ParquetSource(path, origin)
    if path.suffix == ".tar":
        return TarSource(path, origin)
    return ListSource(path, read_llava_file(path, image_folder, video_folder, origin.dataset,
                                            allow_outside_media_root))


class EntryTable(Sequence):
    """Entries of several sources (each whole or a selection of its indices), built on access.

    Holds the sources' indexes and the selected indices (numpy), never the records, so a mixture of
    millions of samples costs tens of megabytes in every process.
    """

    def __init__(self, parts: Sequence[tuple[Source, np.ndarray | None]] = ()):
        self.parts = [(source, None if chosen is None else np.asarray(chosen, np.int64)) for source, chosen in parts]
        sizes = [len(source) if chosen is None else len(chosen) for source, chosen in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64))])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"entry {index} is outside 0..{len(self) - 1}")
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        source, chosen = self.parts[part]
        within = index - int(self.starts[part])
        return source.entry(within if chosen is None else int(chosen[within]))

    def __iter__(self) -> Iterator[Entry]:
        for index in range(len(self)):
            yield self[index]

    def __add__(self, other: EntryTable) -> EntryTable:
        return EntryTable([*self.parts, *other.parts])


__all__ = ["EntryTable", "JsonlSource", "ListSource", "Origin", "ParquetSource", "Source", "TarSource",
           "open_source"]
