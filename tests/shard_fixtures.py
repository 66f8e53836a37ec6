"""Shards built from LLaVA JSONL and its image files: Parquet in the LLaVA-OneVision-Data schema
(image bytes inside, as Hugging Face ``datasets`` writes an Image feature) and WebDataset tars."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ONEVISION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
    ("data_source", pa.string()),
])


def _records(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def onevision_rows(jsonl: Path, image_folder: Path) -> list[dict]:
    rows = []
    for record in _records(jsonl):
        image = record.get("image")
        rows.append({
            "id": record["id"],
            "image": {"bytes": (image_folder / image).read_bytes(), "path": image} if image else None,
            "conversations": record["conversations"],
            "data_source": "captions",
        })
    return rows


def write_parquet(rows: list[dict], path: Path, row_group_size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ONEVISION_SCHEMA), path, row_group_size=row_group_size)
    return path


def parquet_shards(jsonl: Path, image_folder: Path, folder: Path, shards: int = 2, row_group_size: int = 3) -> Path:
    """The records of ``jsonl`` in ``shards`` Parquet files (in order), several row groups each."""
    rows = onevision_rows(jsonl, image_folder)
    per = -(-len(rows) // shards)
    for number in range(shards):
        write_parquet(rows[number * per:(number + 1) * per], folder / f"train-{number:05d}.parquet", row_group_size)
    return folder


def write_tar(members: list[tuple[str, bytes]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def wds_members(jsonl: Path, image_folder: Path) -> list[tuple[str, bytes]]:
    members = []
    for number, record in enumerate(_records(jsonl)):
        key = f"sample{number:06d}"
        image = record.pop("image", None)
        members.append((f"{key}.json", json.dumps(record).encode()))
        if image:
            members.append((f"{key}{Path(image).suffix}", (image_folder / image).read_bytes()))
    return members


def tar_shards(jsonl: Path, image_folder: Path, folder: Path, shards: int = 2) -> Path:
    """The records of ``jsonl`` as WebDataset samples in ``shards`` tar files (in order)."""
    members = wds_members(jsonl, image_folder)
    keys = sorted({name.split(".")[0] for name, _ in members})
    per = -(-len(keys) // shards)
    for number in range(shards):
        mine = set(keys[number * per:(number + 1) * per])
        write_tar([m for m in members if m[0].split(".")[0] in mine], folder / f"shard-{number:05d}.tar")
    return folder
