"""Mixture statistics: samples, modalities and tokens per dataset, from headers (no decoding)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from llavakit.data.dataset import LlavaDataset
from llavakit.data.mixture import Mixture


@dataclass
class DatasetStats:
    name: str
    data_file: str = ""
    strategy: str = "all"
    available: int = 0
    selected: int = 0
    modalities: Counter = field(default_factory=Counter)
    text_tokens: int = 0
    visual_tokens: int = 0
    max_tokens: int = 0
    skipped: int = 0

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.visual_tokens

    def as_dict(self) -> dict:
        return {
            "name": self.name, "data_file": self.data_file, "strategy": self.strategy, "available": self.available,
            "selected": self.selected, "modalities": dict(self.modalities), "text_tokens": self.text_tokens,
            "visual_tokens": self.visual_tokens, "total_tokens": self.total_tokens, "max_tokens": self.max_tokens,
            "skipped": self.skipped,
        }


def mixture_stats(dataset: LlavaDataset, mixture: Mixture) -> tuple[list[DatasetStats], DatasetStats]:
    """Per-dataset statistics in mixture order, and the total. Bad samples count as skipped
    (the dataset's ``on_error`` decides whether they raise first)."""
    parts = {p.name: DatasetStats(p.name, p.data_file, p.strategy, p.available, p.selected) for p in mixture.parts}
    total = DatasetStats("total", available=sum(p.available for p in mixture.parts), selected=len(dataset))
    for entry, info in zip(dataset.entries, dataset.lengths()):
        for stats in (parts.setdefault(entry.dataset, DatasetStats(entry.dataset)), total):
            if info is None:
                stats.skipped += 1
                continue
            stats.modalities[info.modality] += 1
            stats.text_tokens += info.text_tokens
            stats.visual_tokens += info.visual_tokens
            stats.max_tokens = max(stats.max_tokens, info.total)
    return list(parts.values()), total


def format_stats(parts: list[DatasetStats], total: DatasetStats) -> str:
    header = f"{'dataset':<24} {'strategy':<14} {'samples':>9} {'skipped':>8} {'text tok':>11} " \
             f"{'visual tok':>11} {'total tok':>11} {'max':>7}  modalities"
    lines = [header, "-" * len(header)]
    for stats in [*parts, total]:
        modalities = ", ".join(f"{m} {n}" for m, n in sorted(stats.modalities.items()))
        lines.append(
            f"{stats.name[:24]:<24} {stats.strategy[:14]:<14} {stats.selected:>9} {stats.skipped:>8} "
            f"{stats.text_tokens:>11} {stats.visual_tokens:>11} {stats.total_tokens:>11} {stats.max_tokens:>7}  "
            f"{modalities}"
        )
    return "\n".join(lines)
