"""Evaluation tasks as data: a small YAML file says where the samples are, how to write the prompt,
how to generate and which metric scores the replies (format in docs/evaluation.md).

Built-in tasks ship as package data in ``llavakit/evaluation/tasks/<name>.yaml``; `load_task`
takes a built-in name, a YAML path or an already built `TaskSpec`.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from llavakit.errors import LlavakitError
from llavakit.evaluation.metrics import METRICS

# Fields of a predictions line that the runner writes (see runner.prediction_line and finish_task).
RESERVED_FIELDS = {"id", "prediction", "prompt", "prompt_tokens", "finish_reason", "score", "review", "judge_error"}


class TaskSpecError(LlavakitError):
    """A task file that cannot be read or does not validate; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HFSource(_Strict):
    """A Hugging Face dataset (loaded with `datasets` when it is installed and the hub is reachable)."""

    dataset: str
    name: str | None = None
    split: str
    revision: str | None = None


class DataSpec(_Strict):
    """Where the samples are: a local JSON/JSONL file (tried first), else a Hugging Face dataset.

    ``data_dir`` is relative to the data root (``--data-root``), or to the task file's folder when no
    data root is given; ``file`` and ``media_dir`` are relative to ``data_dir``. Image and video paths
    in the records are relative to ``media_dir`` (default: the data file's folder, as LLaVA files are).
    ``splits`` names the task's held-out splits, each a file like ``file``; ``file`` is what is read
    when no split is asked for (`TaskSpec.for_split`).
    """

    data_dir: str = "."
    file: str | None = None
    splits: dict[str, str] = Field(default_factory=dict)
    media_dir: str | None = None
    hf: HFSource | None = None
    id_field: str | None = "id"  # None: the record's position in the data is its id
    image_field: str | None = "image"  # a path, a list of paths, or (HF) a PIL image
    video_field: str | None = "video"  # a path

    @model_validator(mode="after")
    def _has_source(self) -> DataSpec:
        if self.file is None and self.hf is None:
            raise ValueError("give 'file' (a local JSON/JSONL file) or 'hf' (a Hugging Face dataset), or both")
        return self


class PartSpec(_Strict):
    """A template variable built from an optional record field: ``format`` with the value in ``{}``,
    or the empty string when the field is missing, empty or NaN (ScienceQA's hint, MMBench's hint)."""

    field: str
    format: str = "{}"


class OptionsSpec(_Strict):
    """The ``{options}`` template variable: lettered options from a list field or from columns."""

    field: str | None = None  # a list of option texts (ScienceQA's "choices")
    columns: list[str] | None = None  # one column per option, letters from the column order (MMBench's A-E)
    format: str = "{letter}. {text}"
    separator: str = "\n"
    save_as: str | None = "choices"  # also store the option texts in the predictions line under this name

    @model_validator(mode="after")
    def _one_source(self) -> OptionsSpec:
        if (self.field is None) == (self.columns is None):
            raise ValueError("give exactly one of 'field' (a list of options) or 'columns'")
        return self


class PromptSpec(_Strict):
    """The user turn. ``template`` is a Python format string over the record's fields plus ``parts``
    and ``options``. The record's ``<image>``/``<video>`` placeholders mark where media go; a text
    without placeholders gets its media in front (LLaVA's ``<image>\\n`` + question)."""

    template: str = "{question}"
    system: str | None = None
    parts: dict[str, PartSpec] = Field(default_factory=dict)
    options: OptionsSpec | None = None
    replace: dict[str, str] = Field(default_factory=dict)  # applied to the rendered text, in order


class GenerationSpec(_Strict):
    max_new_tokens: int = Field(16, gt=0)
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)


class JudgeSpec(_Strict):
    """LLM-as-judge scoring: the packaged judge prompt (or a prompt file path) and which fields of
    the predictions line fill its ``{context}``, ``{question}`` and ``{reference}``."""

    prompt: str = "llava_bench"
    context: str | None = "caption"
    question: str = "question"
    reference: str = "answer"


class TaskSpec(_Strict):
    name: str
    # Bumped whenever what the task asks or how it scores changes (its questions' wording, its
    # metric), so scores of different versions are never compared as one (docs/evaluation.md).
    version: int = Field(1, ge=1)
    description: str = ""
    data: DataSpec
    prompt: PromptSpec = PromptSpec()
    generation: GenerationSpec = GenerationSpec()
    metric: str
    score: str | None = None  # the headline key of the metric's scores (default: its first)
    fields: dict[str, str] = Field(default_factory=dict)  # predictions-line field -> record field
    chance: float | None = None
    chance_field: str | None = None  # a per-record chance level (the synthetic world writes "chance")
    judge: JudgeSpec | None = None
    _source: str = PrivateAttr(default="<in memory>")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric {value!r}; known: {', '.join(METRICS)}")
        return value

    @field_validator("name")
    @classmethod
    def _file_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\:*?\"<>|[] ") or value.startswith("."):
            raise ValueError(f"{value!r} is not usable as a file name (no slashes, spaces or leading dot)")
        return value

    @field_validator("fields")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(set(value) & RESERVED_FIELDS)
        if taken:
            raise ValueError(f"{', '.join(taken)}: written by the runner itself, choose other names")
        return value

    @model_validator(mode="after")
    def _judge_metric(self) -> TaskSpec:
        if self.metric == "llava_bench" and self.judge is None:
            raise ValueError("metric 'llava_bench' scores judge replies: add a 'judge' section")
        return self

    @property
    def source(self) -> str:
        """The task file this spec came from ('<in memory>' for one built in Python)."""
        return self._source

    def for_split(self, split: str) -> TaskSpec:
        """The task over the file of its split ``split`` (one of ``data.splits``)."""
        if split not in self.data.splits:
            known = ", ".join(self.data.splits) or "none"
            raise TaskSpecError(f"task {self.name} ({self.source}): no split {split!r} (its splits: {known})")
        data = self.model_dump(mode="json")  # every field as the task file gave it (a null included)
        data["data"]["file"] = self.data.splits[split]
        return task_from_dict(data, f"{self.source} ({split} split)")

    def fingerprint(self) -> str:
        """A hash of everything that changes the predictions (not the description, nor the splits'
        files other than the one read): resuming into an output folder made with another definition
        of the task is refused."""
        payload = self.model_dump(exclude={"description": True, "data": {"splits"}})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def builtin_task_names() -> list[str]:
    """The tasks shipped with llavakit (file names under ``llavakit/evaluation/tasks``)."""
    folder = resources.files("llavakit.evaluation") / "tasks"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _builtin_path(name: str) -> Path | None:
    path = Path(str(resources.files("llavakit.evaluation") / "tasks" / f"{name}.yaml"))
    return path if path.is_file() else None


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  field {where!r}: {item['msg']}")
    return "\n".join(lines)


def task_from_dict(data: Any, source: str = "<in memory>") -> TaskSpec:
    if not isinstance(data, dict):
        raise TaskSpecError(f"task file {source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as err:
        raise TaskSpecError(f"task file {source}: invalid task:\n{_format_errors(err)}") from None
    spec._source = source
    return spec


def load_task_file(path: str | Path) -> TaskSpec:
    """Read one task YAML; ``name`` defaults to the file name without ``.yaml``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise TaskSpecError(f"task file {path}: cannot read ({err})") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return task_from_dict(data, str(path))


def load_task(task: str | Path | TaskSpec, split: str | None = None) -> TaskSpec:
    """A built-in task name (``synth_color``, ``vqav2``...), a YAML file, or a `TaskSpec` as is;
    with ``split``, over that split's file when the task names splits (`select_split`)."""
    if split is not None:
        return select_split(load_task(task), split)
    if isinstance(task, TaskSpec):
        return task
    text = str(task)
    if isinstance(task, Path) or text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_task_file(task)
    path = _builtin_path(text)
    if path is None:
        raise TaskSpecError(f"unknown task {text!r}: not a YAML file and not a built-in task "
                            f"({', '.join(builtin_task_names())})")
    return load_task_file(path)


def select_split(spec: TaskSpec, split: str) -> TaskSpec:
    """``spec`` over its split ``split`` when it names splits (the synthetic world's tasks: dev,
    test, test_paraphrase); a task that names none has one file and is returned as it is."""
    return spec.for_split(split) if spec.data.splits else spec
