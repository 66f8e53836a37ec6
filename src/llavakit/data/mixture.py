"""Mixtures: a YAML list of data files or shard folders, each with a sampling strategy, seeded.

    seed: 0
    datasets:
      - json_path: llava_v1_5_mix665k.json
        image_folder: images/
        sampling_strategy: random:10%
      - json_path: video.jsonl
        video_folder: videos/
        sampling_strategy: first:1000
      - path: onevision/          # a folder of Parquet shards (or .tar WebDataset shards)
        sampling_strategy: all

Strategies: ``all``, ``first:N``, ``end:N``, ``random:N``; N is a count or ``K%`` (rounded up, as
LLaVA-NeXT does). ``random`` draws from a generator seeded by (seed, dataset position) only, so every
process and every run gets the same list without any communication. Relative paths are relative
to the YAML file. A dataset's media paths must stay inside its folders unless it says
``allow_outside_media_root: true``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llavakit.data.sources import EntryTable, open_source
from llavakit.errors import LlavakitError

_STRATEGY = re.compile(r"^(all)$|^(first|end|random):(\d+(?:\.\d+)?%|\d+)$")


class MixtureError(LlavakitError):
    """A mixture file that cannot be used (bad YAML, unknown strategy, missing file)."""


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    json_path: str | None = None  # the historical name; `path` says the same for any format
    path: str | None = None
    image_folder: str | None = None
    video_folder: str | None = None
    sampling_strategy: str = "all"
    name: str | None = None
    allow_outside_media_root: bool = False  # media paths may leave image_folder / video_folder

    @model_validator(mode="after")
    def _one_path(self) -> DatasetSpec:
        if (self.json_path is None) == (self.path is None):
            raise ValueError("give the data as `path` (.json, .jsonl, .parquet, .tar or a folder of shards) "
                             "or `json_path`, exactly one of them")
        return self

    @property
    def data_path(self) -> str:
        return self.path if self.path is not None else self.json_path

    @field_validator("sampling_strategy")
    @classmethod
    def _known(cls, value: str) -> str:
        parse_strategy(value)
        return value


class MixtureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    datasets: list[DatasetSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Strategy:
    kind: str  # all, first, end, random
    count: int | None = None
    percent: float | None = None

    def size(self, total: int) -> int:
        if self.kind == "all":
            return total
        return math.ceil(self.percent * total / 100) if self.percent is not None else self.count


def parse_strategy(text: str) -> Strategy:
    match = _STRATEGY.match(text.strip())
    if not match:
        raise ValueError(f"sampling strategy {text!r}: use all, first:N, end:N or random:N (N a count or K%)")
    if match.group(1):
        return Strategy("all")
    kind, amount = match.group(2), match.group(3)
    if amount.endswith("%"):
        percent = float(amount[:-1])
        if not 0 < percent <= 100:
            raise ValueError(f"sampling strategy {text!r}: a percentage must be in (0, 100]")
        return Strategy(kind, percent=percent)
    return Strategy(kind, count=int(amount))


def select(total: int, strategy: Strategy, seed: int, position: int) -> list[int]:
    """Indices chosen from a file of ``total`` records, in file order."""
    size = strategy.size(total)
    if size > total:
        raise ValueError(f"{strategy.kind}:{size} asks for {size} samples but the file has {total}")
    if strategy.kind == "all":
        return list(range(total))
    if strategy.kind == "first":
        return list(range(size))
    if strategy.kind == "end":
        return list(range(total - size, total))
    rng = np.random.default_rng([seed, position])  # depends on nothing else: same on every process
    return np.sort(rng.choice(total, size=size, replace=False)).tolist()


@dataclass(frozen=True)
class MixturePart:
    name: str
    data_file: str
    strategy: str
    available: int
    selected: int


@dataclass
class Mixture:
    entries: EntryTable  # built on access, so a mixture of millions of samples stays small
    parts: list[MixturePart]
    seed: int


def load_mixture(path: str | Path, seed: int | None = None, allow_outside_media_root: bool = False) -> Mixture:
    """Read a mixture YAML and every file it lists; ``seed`` overrides the file's seed;
    ``allow_outside_media_root`` allows it for every dataset of the mixture."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise MixtureError(f"mixture {path}: cannot read ({err})") from None
    if isinstance(raw, list):  # a bare list of datasets
        raw = {"datasets": raw}
    try:
        spec = MixtureSpec.model_validate(raw)
    except ValidationError as err:
        raise MixtureError(f"mixture {path}: invalid:\n{err}") from None
    return build_mixture(spec, path.parent, spec.seed if seed is None else seed, allow_outside_media_root)


def build_mixture(spec: MixtureSpec, base: Path, seed: int, allow_outside_media_root: bool = False) -> Mixture:
    parts, chosen_parts = [], []
    for position, dataset in enumerate(spec.datasets):
        data_file = _under(base, dataset.data_path)
        name = dataset.name or Path(dataset.data_path).stem
        source = open_source(
            data_file, _under(base, dataset.image_folder), _under(base, dataset.video_folder), dataset=name,
            allow_outside_media_root=allow_outside_media_root or dataset.allow_outside_media_root,
        )
        strategy = parse_strategy(dataset.sampling_strategy)
        try:
            chosen = None if strategy.kind == "all" else select(len(source), strategy, seed, position)
        except ValueError as err:
            raise MixtureError(f"mixture dataset {name} ({data_file}): {err}") from None
        chosen_parts.append((source, chosen))
        selected = len(source) if chosen is None else len(chosen)
        parts.append(MixturePart(name, str(data_file), dataset.sampling_strategy, len(source), selected))
    return Mixture(EntryTable(chosen_parts), parts, seed)


def _under(base: Path, path: str | None) -> Path | None:
    if path is None:
        return None
    return Path(path) if Path(path).is_absolute() else base / path


def load_entries(
    path: str | Path, image_folder: str | Path | None = None, video_folder: str | Path | None = None,
    seed: int | None = None, allow_outside_media_root: bool = False,
) -> Mixture:
    """A mixture YAML, or one data file (.json, .jsonl, .parquet, .tar) or folder of Parquet or tar
    shards, as a mixture of one dataset taken whole."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        return load_mixture(path, seed, allow_outside_media_root)
    source = open_source(path, image_folder, video_folder, allow_outside_media_root=allow_outside_media_root)
    part = MixturePart(path.stem, str(path), "all", len(source), len(source))
    return Mixture(EntryTable([(source, None)]), [part], seed or 0)
