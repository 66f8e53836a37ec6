"""The images to re-caption: a folder (searched recursively), a text list, or a LLaVA data file.

Each image gets an id and the path written into the records, relative to an image root that the
training config names as ``image_folder``:

- a folder: every image file under it, sorted by relative path; root = the folder; id = the path;
- a ``.txt`` list: one path per line (``#`` comments and blank lines skipped); relative paths are
  relative to ``image_folder`` or else to the list's folder; id = the path as listed;
- a LLaVA ``.json`` / ``.jsonl`` file: each single-image record's ``image`` and ``id`` (e.g. to
  re-caption LCS-558K); relative to ``image_folder`` or else to the data file's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llavakit.datagen.errors import DatagenError
from llavakit.datagen.files import read_jsonl

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageRef:
    id: str
    image: str  # as written in the record
    path: Path  # where to read it


@dataclass(frozen=True)
class ImageSet:
    refs: list[ImageRef]
    root: Path  # what relative "image" paths are relative to (the image_folder for training)


def list_images(source: str | Path, image_folder: str | Path | None = None) -> ImageSet:
    source = Path(source)
    if source.is_dir():
        if image_folder is not None:
            raise DatagenError(f"{source}: --image-folder goes with a list file, not with a folder of images")
        return _folder(source)
    if not source.is_file():
        raise DatagenError(f"{source}: no such folder or list file")
    root = Path(image_folder) if image_folder is not None else source.parent
    refs = _llava_file(source, root) if source.suffix in (".json", ".jsonl") else _text_list(source, root)
    _check_unique(source, refs)
    return ImageSet(refs, root)


def _folder(folder: Path) -> ImageSet:
    files = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DatagenError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    refs = [ImageRef(p.relative_to(folder).as_posix(), p.relative_to(folder).as_posix(), p) for p in files]
    return ImageSet(refs, folder)


def _text_list(path: Path, root: Path) -> list[ImageRef]:
    refs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            refs.append(ImageRef(name, name, _under(root, name)))
    return refs


def _llava_file(path: Path, root: Path) -> list[ImageRef]:
    records = list(read_jsonl(path)) if path.suffix == ".jsonl" else list(enumerate(_json_list(path), start=1))
    refs = []
    for position, record in records:
        if not isinstance(record, dict):
            raise DatagenError(f"{path}:{position}: not a JSON object")
        image = record.get("image")
        if isinstance(image, str) and image:
            refs.append(ImageRef(str(record.get("id", image)), image, _under(root, image)))
    if not refs:
        raise DatagenError(f"{path}: no single-image records")
    return refs


def _json_list(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatagenError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise DatagenError(f"{path}: a LLaVA JSON file holds a list of records")
    return records


def _under(root: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else root / name


def _check_unique(source: Path, refs: list[ImageRef]) -> None:
    seen: set[str] = set()
    for ref in refs:
        if ref.id in seen:
            raise DatagenError(f"{source}: id {ref.id!r} appears twice; each image needs its own id")
        seen.add(ref.id)
