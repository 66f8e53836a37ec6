"""Statistics of a generated dataset: records per type, turns per conversation, answer lengths.

Works on any LLaVA JSON / JSONL file; records without a ``"type"`` count as ``(untyped)``. Lengths
are in words (whitespace-separated), which needs no tokenizer and compares across models.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from llavakit.datagen.errors import DatagenError
from llavakit.datagen.files import read_jsonl

UNTYPED = "(untyped)"


@dataclass
class TypeStats:
    records: int = 0
    turns: Counter = field(default_factory=Counter)  # question/answer pairs per record -> records
    answer_words: list[int] = field(default_factory=list)
    question_words: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"records": self.records, "pairs": sum(self.turns[k] * k for k in self.turns),
                "turns_per_record": _summary(list(self.turns.elements())),
                "turns_histogram": {str(k): v for k, v in sorted(self.turns.items())},
                "answer_words": _summary(self.answer_words), "question_words": _summary(self.question_words)}


def _summary(values: list[int]) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0, "min": 0, "max": 0}
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(ordered), 2), "median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "min": ordered[0], "max": ordered[-1]}


def dataset_stats(path: str | Path) -> dict:
    """{"records", "images", "types": {type: TypeStats.as_dict()}, "all": ...}."""
    per_type: dict[str, TypeStats] = defaultdict(TypeStats)
    total = TypeStats()
    images = set()
    for where, record in _records(Path(path)):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            raise DatagenError(f"{where}: not a LLaVA record with \"conversations\"")
        if record.get("image") is not None:
            images.add(json.dumps(record["image"]))
        for stats in (per_type[str(record.get("type", UNTYPED))], total):
            _add(stats, turns)
    return {"records": total.records, "images": len(images),
            "types": {k: v.as_dict() for k, v in sorted(per_type.items())}, "all": total.as_dict()}


def _records(path: Path):
    if not path.is_file():
        raise DatagenError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        for line, record in read_jsonl(path):
            if record is None:
                raise DatagenError(f"{path}:{line}: not valid JSON")
            yield f"{path}:{line}", record
        return
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatagenError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise DatagenError(f"{path}: a LLaVA JSON file holds a list of records")
    yield from ((f"{path}[{i}]", r) for i, r in enumerate(records))


def _add(stats: TypeStats, turns: list) -> None:
    stats.records += 1
    pairs = 0
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        words = len(text.replace("<image>", " ").split()) if isinstance(text, str) else 0
        if role in ("gpt", "assistant"):
            stats.answer_words.append(words)
            pairs += 1
        elif role in ("human", "user"):
            stats.question_words.append(words)
    stats.turns[pairs] += 1


def format_stats(stats: dict) -> str:
    header = f"{'type':<20} {'records':>8} {'pairs':>7} {'turns/rec':>10} {'max':>4}  " \
             f"{'answer words mean / median / p90 / max':>40}"
    lines = [header, "-" * len(header)]
    for name, s in [*stats["types"].items(), ("all", stats["all"])]:
        t, a = s["turns_per_record"], s["answer_words"]
        lines.append(f"{name:<20} {s['records']:>8} {s['pairs']:>7} {t['mean']:>10.2f} {t['max']:>4}  "
                     f"{a['mean']:>19.1f} / {a['median']:>6} / {a['p90']:>4} / {a['max']:>5}")
    lines.append(f"{stats['records']} records about {stats['images']} images")
    return "\n".join(lines)
