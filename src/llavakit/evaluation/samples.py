"""Task data -> evaluation samples: records read from a local JSON/JSONL file or a Hugging Face
dataset, the prompt written from the task's template, media paths resolved and checked, and the
conversation built for `Llava.generate`."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llavakit.data.templates import as_parts
from llavakit.errors import LlavakitError
from llavakit.evaluation.task_spec import OptionsSpec, TaskSpec

PLACEHOLDERS = ("<image>", "<video>")


class TaskDataError(LlavakitError):
    """A task's data cannot be found or read, or a sample does not fit the task's prompt and fields."""


@dataclass(frozen=True)
class EvalSample:
    """One question of a task. ``media`` holds ("image" | "video", path or PIL image or bytes) in
    the order their placeholders appear; ``fields`` go into the predictions line."""

    id: str | int
    index: int  # position in the task's data
    prompt: str  # user text with <image>/<video> placeholders
    media: tuple[tuple[str, Any], ...]
    fields: dict[str, Any]
    system: str | None = None
    chance: float | None = None

    @property
    def key(self) -> str:
        return str(self.id)

    def messages(self) -> list[dict]:
        """The conversation for `Llava.generate`: system turn (if any) and the user turn as parts."""
        images = iter([source for kind, source in self.media if kind == "image"])
        video = iter([source for kind, source in self.media if kind == "video"])
        content = []
        for part in as_parts(self.prompt, PLACEHOLDERS):
            if part["type"] == "text":
                content.append(part)
            else:
                source = next(images if part["type"] == "image" else video)
                source = source() if callable(source) else source  # LazyMedia
                content.append({"type": part["type"], part["type"]: source})
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------- where the data is


def _is_builtin(spec: TaskSpec) -> bool:
    folder = Path(str(resources.files("llavakit.evaluation") / "tasks")).resolve()
    return Path(spec.source).resolve().parent == folder if spec.source != "<in memory>" else False


def data_dir(spec: TaskSpec, data_root: str | Path | None) -> Path:
    """``data.data_dir`` resolved: against ``data_root``, else against the task file's folder."""
    folder = Path(spec.data.data_dir)
    if folder.is_absolute():
        return folder
    if data_root is not None:
        return Path(data_root) / folder
    if _is_builtin(spec) or spec.source == "<in memory>":
        raise TaskDataError(f"task {spec.name} ({spec.source}): data.data_dir {spec.data.data_dir!r} is relative; "
                            f"give the data root (--data-root DIR, or data_root=...)")
    return Path(spec.source).parent / folder


def _local_records(path: Path, spec: TaskSpec, limit: int | None) -> list[dict]:
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TaskDataError(f"task {spec.name}: {path}: not a readable JSON file ({err})") from None
        if not isinstance(records, list):
            raise TaskDataError(f"task {spec.name}: {path}: a JSON task file holds a list of records")
        records = records[:limit] if limit is not None else records
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise TaskDataError(f"task {spec.name}: {path}: record {i} is not a JSON object")
        return records
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(f"task {spec.name}: {path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise TaskDataError(f"task {spec.name}: {path}:{number}: expected a JSON object")
            records.append(record)
    return records


class LazyMedia:
    """One image (or video) of a Hugging Face dataset row, read only when the sample is generated."""

    def __init__(self, dataset: Any, row: int, field: str) -> None:
        self.dataset, self.row, self.field = dataset, row, field

    def __call__(self) -> Any:
        return self.dataset[self.row][self.field]

    def __repr__(self) -> str:
        return f"LazyMedia(row={self.row}, field={self.field!r})"


def _hf_records(spec: TaskSpec, limit: int | None, local: Path | None) -> list[dict]:
    """Rows as dicts; media columns become `LazyMedia` (one medium per column per row) so that a large
    dataset's images stay on disk until their batch."""
    hf = spec.data.hf
    missing = f"the local file {local} does not exist, and " if local is not None else ""
    try:
        import datasets
    except ImportError:
        raise TaskDataError(f"task {spec.name} ({spec.source}): {missing}loading the Hugging Face dataset "
                            f"{hf.dataset!r} needs the `datasets` package (pip install datasets)") from None
    try:
        dataset = datasets.load_dataset(hf.dataset, hf.name, split=hf.split, revision=hf.revision)
    except Exception as err:  # noqa: BLE001 - network, auth and missing-split errors all end up here
        raise TaskDataError(f"task {spec.name} ({spec.source}): {missing}the Hugging Face dataset {hf.dataset!r} "
                            f"(name={hf.name!r}, split={hf.split!r}) cannot be loaded: {err}") from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    media = [f for f in (spec.data.image_field, spec.data.video_field) if f and f in dataset.column_names]
    text_rows = dataset.remove_columns(media) if media else dataset
    records = []
    for index, row in enumerate(text_rows):
        records.append({**dict(row), **{f: LazyMedia(dataset, index, f) for f in media}})
    return records


def read_records(spec: TaskSpec, data_root: str | Path | None, limit: int | None = None) -> tuple[list[dict], Path]:
    """The task's raw records (the first ``limit``) and the folder media paths are relative to."""
    local = None
    if spec.data.file is not None:
        folder = data_dir(spec, data_root) if spec.data.hf is None else _data_dir_or_none(spec, data_root)
        local = folder / spec.data.file if folder is not None else None
        if local is not None and local.is_file():
            media = local.parent if spec.data.media_dir is None else folder / spec.data.media_dir
            return _local_records(local, spec, limit), media
        if spec.data.hf is None:
            raise TaskDataError(f"task {spec.name} ({spec.source}): data file {local} not found")
    return _hf_records(spec, limit, local), Path(".")


def _data_dir_or_none(spec: TaskSpec, data_root: str | Path | None) -> Path | None:
    try:
        return data_dir(spec, data_root)
    except TaskDataError:
        return None  # no data root for a built-in task with an HF fallback: go to the hub


# ----------------------------------------------------------------------------- records -> samples


def _is_empty(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, (str, list, tuple)) and (len(value) == 0 or value == "nan")


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _options(spec: OptionsSpec, record: dict) -> list[tuple[str, str]]:
    if spec.field is not None:
        values = record.get(spec.field)
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"options field {spec.field!r} must be a non-empty list")
        return [(chr(ord("A") + i), str(v)) for i, v in enumerate(values)]
    return [(column, str(record[column])) for column in spec.columns if not _is_empty(record.get(column))]


class _Variables(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def render_prompt(spec: TaskSpec, record: dict) -> tuple[str, dict[str, Any]]:
    """The user text from the template, and the extra fields it produced (the options list)."""
    prompt, extra = spec.prompt, {}
    variables = _Variables(record)
    for name, part in prompt.parts.items():
        value = record.get(part.field)
        variables[name] = "" if _is_empty(value) else part.format.format(value)
    if prompt.options is not None:
        options = _options(prompt.options, record)
        variables["options"] = prompt.options.separator.join(
            prompt.options.format.format(letter=letter, text=text) for letter, text in options)
        if prompt.options.save_as:
            extra[prompt.options.save_as] = [text for _, text in options]
    try:
        text = prompt.template.format_map(variables)
    except KeyError as err:
        name = err.args[0]
        raise ValueError(f"prompt.template uses {{{name}}} but the record has no field {name!r}") from None
    except (IndexError, ValueError) as err:
        raise ValueError(f"prompt.template {prompt.template!r} is not a valid format string ({err})") from None
    for old, new in prompt.replace.items():
        text = text.replace(old, new)
    return text, extra


def _media_value(value: Any, media_dir: Path) -> Any:
    if isinstance(value, dict):  # a Hugging Face Image feature that was not decoded
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, str):
        path = media_dir / value
        if not path.is_file():
            raise ValueError(f"media file not found: {path}")
        return str(path)
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value).getvalue()
    if isinstance(value, LazyMedia) or (hasattr(value, "size") and hasattr(value, "mode")):  # lazy or PIL
        return value
    raise ValueError(f"cannot use a {type(value).__name__} as an image or video")


def _media(spec: TaskSpec, record: dict, media_dir: Path) -> list[tuple[str, Any]]:
    media = []
    for kind, field in (("image", spec.data.image_field), ("video", spec.data.video_field)):
        if field is None or _is_empty(record.get(field)):
            continue
        values = record[field] if isinstance(record[field], (list, tuple)) else [record[field]]
        media += [(kind, _media_value(v, media_dir)) for v in values]
    return media


def _place_media(text: str, media: list[tuple[str, Any]]) -> str:
    """Put placeholders in front of a text that has none; check the count of one that has some."""
    wanted = [kind for kind, _ in media]
    written = [p for p in PLACEHOLDERS if p in text]
    if not written:
        return "".join(f"<{kind}>\n" for kind in wanted) + text
    images, videos = text.count("<image>"), text.count("<video>")
    if (images, videos) != (wanted.count("image"), wanted.count("video")):
        raise ValueError(f"the prompt has {images} <image> and {videos} <video> placeholders but the record has "
                         f"{wanted.count('image')} images and {wanted.count('video')} videos")
    return text


def build_sample(spec: TaskSpec, record: dict, index: int, media_dir: Path) -> EvalSample:
    sample_id = record.get(spec.data.id_field, index) if spec.data.id_field else index
    sample_id = _json_safe(sample_id)
    try:
        text, extra = render_prompt(spec, record)
        media = _media(spec, record, media_dir)
        text = _place_media(text, media)
        fields = {}
        for name, source in spec.fields.items():
            if source not in record:
                raise ValueError(f"fields.{name} reads {source!r}, which the record lacks")
            fields[name] = _json_safe(record[source])
        chance = None
        if spec.chance_field is not None:
            chance = record.get(spec.chance_field)
            if not isinstance(chance, (int, float)) or isinstance(chance, bool):
                raise ValueError(f"chance_field {spec.chance_field!r} must hold a number, got {chance!r}")
    except ValueError as err:
        raise TaskDataError(f"task {spec.name} ({spec.source}): sample {sample_id!r} (record {index}): {err}") from None
    return EvalSample(sample_id, index, text, tuple(media), {**extra, **fields}, spec.prompt.system,
                      None if chance is None else float(chance))


def load_samples(spec: TaskSpec, data_root: str | Path | None = None, limit: int | None = None) -> list[EvalSample]:
    """Every sample of the task (the first ``limit``), in data order; ids must be unique."""
    records, media_dir = read_records(spec, data_root, limit)
    if not records:
        raise TaskDataError(f"task {spec.name} ({spec.source}): the data has no records")
    samples = [build_sample(spec, record, i, media_dir) for i, record in enumerate(records)]
    seen: dict[str, int] = {}
    for sample in samples:
        if sample.key in seen:
            raise TaskDataError(f"task {spec.name} ({spec.source}): id {sample.id!r} is used by records "
                                f"{seen[sample.key]} and {sample.index}; ids must be unique "
                                f"(or set data.id_field: null)")
        seen[sample.key] = sample.index
    return samples

