"""Image annotations for data generation: COCO files (captions and/or instances) or a simple JSONL.

Both become :class:`ImageAnnotation`: captions and boxes ``[x1, y1, x2, y2]`` normalised to [0, 1].

- COCO: one or more JSON files with ``images`` (``id``, ``file_name``, ``width``, ``height``) and
  ``annotations``: captions (``image_id``, ``caption``) and/or instances (``image_id``,
  ``category_id``, ``bbox`` as ``[x, y, w, h]`` in pixels, names from ``categories``). Pass the
  captions and the instances file together; images keep the order of the first file.
- JSONL: one ``{"image", "captions": [...], "boxes": [{"name", "bbox": [x1, y1, x2, y2]}], "width",
  "height", "id"?}`` a line (the format of ``llavakit synth``'s ``annotations.jsonl``). Boxes are
  normalised when every coordinate lies in [0, 1] (``box_units="auto"``), else pixels divided by
  ``width`` / ``height``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llavakit.datagen.errors import DatagenError

BoxUnits = Literal["auto", "normalized", "pixels"]


@dataclass(frozen=True)
class Box:
    name: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1]


@dataclass(frozen=True)
class ImageAnnotation:
    key: str  # unique per image: the COCO id, the JSONL "id", or the image path
    image: str  # the path written into the LLaVA records
    captions: tuple[str, ...]
    boxes: tuple[Box, ...]
    source: str  # "file:line" or "file#image_id", for error messages

    @property
    def is_empty(self) -> bool:
        return not self.captions and not self.boxes


def read_annotations(
    paths: Sequence[str | Path], image_prefix: str = "", box_units: BoxUnits = "auto", limit: int | None = None,
) -> list[ImageAnnotation]:
    """Annotations in file order; a JSONL file alone, or any number of COCO JSON files together."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatagenError("no annotation file given")
    for path in paths:
        if not path.is_file():
            raise DatagenError(f"{path}: annotation file not found")
    jsonl = [p for p in paths if p.suffix == ".jsonl"]
    if jsonl and len(paths) > 1:
        raise DatagenError(f"{jsonl[0]}: a JSONL annotation file goes alone (COCO JSON files may be combined)")
    if jsonl:
        annotations = read_jsonl_annotations(jsonl[0], image_prefix, box_units)
    else:
        annotations = read_coco(paths, image_prefix)
    _check_unique(annotations)
    return annotations[:limit] if limit is not None else annotations


# ---- simple JSONL ---------------------------------------------------------------------------
def read_jsonl_annotations(path: Path, image_prefix: str = "", box_units: BoxUnits = "auto") -> list[ImageAnnotation]:
    out = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                out.append(_jsonl_annotation(f"{path}:{number}", line, image_prefix, box_units))
    return out


def _jsonl_annotation(where: str, line: str, image_prefix: str, box_units: BoxUnits) -> ImageAnnotation:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatagenError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
        raise DatagenError(f"{where}: each line must be an object with an \"image\" path")
    captions = _captions(where, record.get("captions", []))
    raw_boxes = record.get("boxes", [])
    if not isinstance(raw_boxes, list):
        raise DatagenError(f"{where}: \"boxes\" must be a list of {{name, bbox}}")
    size = (record.get("width"), record.get("height"))
    boxes = tuple(_jsonl_box(f"{where}: boxes[{i}]", b, size, box_units) for i, b in enumerate(raw_boxes))
    key = str(record.get("id", record["image"]))
    return ImageAnnotation(key, image_prefix + record["image"], captions, boxes, where)


def _captions(where: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise DatagenError(f"{where}: \"captions\" must be a list of strings")
    return tuple(" ".join(c.split()) for c in raw if c.strip())


def _jsonl_box(where: str, raw: Any, size: tuple[Any, Any], units: BoxUnits) -> Box:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise DatagenError(f"{where}: a box is {{\"name\": str, \"bbox\": [x1, y1, x2, y2]}}")
    bbox = _four_numbers(where, raw.get("bbox"))
    normalized = units == "normalized" or (units == "auto" and all(0.0 <= v <= 1.0 for v in bbox))
    if not normalized:
        width, height = size
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            raise DatagenError(f"{where}: pixel boxes need the image's \"width\" and \"height\"")
        bbox = (bbox[0] / width, bbox[1] / height, bbox[2] / width, bbox[3] / height)
    return Box(raw["name"].strip(), _clamped(where, bbox))


def _four_numbers(where: str, raw: Any) -> tuple[float, float, float, float]:
    if not (isinstance(raw, list) and len(raw) == 4 and all(isinstance(v, (int, float)) for v in raw)):
        raise DatagenError(f"{where}: \"bbox\" must be four numbers, got {raw!r}")
    return tuple(float(v) for v in raw)  # type: ignore[return-value]


def _clamped(where: str, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in bbox)
    if x2 < x1 or y2 < y1:
        raise DatagenError(f"{where}: bbox {list(bbox)} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
    return (x1, y1, x2, y2)


# ---- COCO -----------------------------------------------------------------------------------
def read_coco(paths: Sequence[Path], image_prefix: str = "") -> list[ImageAnnotation]:
    images: dict[int, dict] = {}
    captions: dict[int, list[str]] = {}
    boxes: dict[int, list[tuple[int, list]]] = {}
    names: dict[int, str] = {}
    for path in paths:
        doc = _coco_document(path)
        for image in doc["images"]:
            images.setdefault(_coco_image_id(path, image), image | {"_source": str(path)})
        names.update({c["id"]: c["name"] for c in doc.get("categories", []) if "id" in c and "name" in c})
        for index, ann in enumerate(doc["annotations"]):
            where = f"{path}: annotations[{index}]"
            if "caption" in ann:
                captions.setdefault(_ref(where, ann), []).append(str(ann["caption"]))
            elif "bbox" in ann:
                boxes.setdefault(_ref(where, ann), []).append((ann.get("category_id"), ann["bbox"], where))
    return [_coco_annotation(i, im, captions.get(i, []), boxes.get(i, []), names, image_prefix)
            for i, im in images.items()]


def _coco_document(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatagenError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise DatagenError(f"{path}: a COCO file has \"images\" and \"annotations\" lists "
                           "(use .jsonl for one image per line)")
    return doc


def _coco_image_id(path: Path, image: Any) -> int:
    if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
        raise DatagenError(f"{path}: every image needs \"id\" and \"file_name\", got {image!r:.200}")
    return image["id"]


def _ref(where: str, ann: dict) -> int:
    if "image_id" not in ann:
        raise DatagenError(f"{where}: no \"image_id\"")
    return ann["image_id"]


def _coco_annotation(image_id: int, image: dict, captions: list[str], raw_boxes: list, names: dict[int, str],
                     image_prefix: str) -> ImageAnnotation:
    where = f"{image['_source']}#{image_id}"
    width, height = image.get("width"), image.get("height")
    boxes = []
    for category, bbox, box_where in raw_boxes:
        if category not in names:
            raise DatagenError(f"{box_where}: category_id {category!r} is not in \"categories\"")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            raise DatagenError(f"{where}: image {image['file_name']} needs \"width\" and \"height\" for its boxes")
        x, y, w, h = _four_numbers(box_where, bbox)
        boxes.append(Box(names[category], _clamped(box_where, (x / width, y / height, (x + w) / width,
                                                                 (y + h) / height))))
    return ImageAnnotation(str(image_id), image_prefix + image["file_name"], _captions(where, captions),
                           tuple(boxes), where)


def _check_unique(annotations: list[ImageAnnotation]) -> None:
    seen: dict[str, str] = {}
    for ann in annotations:
        if ann.key in seen:
            raise DatagenError(f"{ann.source}: image key {ann.key!r} already used at {seen[ann.key]} "
                               "(give each line a unique \"id\")")
        seen[ann.key] = ann.source
