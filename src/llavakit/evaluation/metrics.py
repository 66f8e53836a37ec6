"""The metric registry: each `Metric` turns a list of prediction records into a `MetricResult`.

A record is one sample as a mapping (one line of a predictions JSONL, see docs/evaluation_metrics.md):
``prediction`` plus the fields the metric needs (``answer``/``answers``, ``choices``, ``category``,
``image_id``, ``review``...). Tasks name metrics by their `METRICS` key; `score` runs one.
The per-sample scoring functions live in `vqa`, `text`, `choice`, `yesno` and `judge`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from llavakit.errors import LlavakitError
from llavakit.evaluation import choice, judge, text, vqa, yesno

Record = Mapping[str, Any]


class FieldError(LlavakitError):
    """A record lacks a field a metric needs, or the field has the wrong type or value."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"field {field_name!r}: {message}")
        self.field = field_name
        self.message = message


class RecordError(LlavakitError):
    """A `FieldError` located: `index` is the record's position in the list given to the metric."""

    def __init__(self, index: int, error: FieldError) -> None:
        super().__init__(f"record {index}: {error}")
        self.index = index
        self.field = error.field
        self.message = error.message


@dataclass
class MetricResult:
    """What a metric reports: `scores` are the headline numbers (the table), `details` the counts and
    breakdowns (``unparsed``, ``by_category``...), `per_sample` one entry per record (``id``,
    ``score`` and what was parsed)."""

    metric: str
    n: int
    scores: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)
    per_sample: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, *, per_sample: bool = True) -> dict[str, Any]:
        out = {"metric": self.metric, "n": self.n, "scores": self.scores, "details": self.details}
        if per_sample:
            out["per_sample"] = self.per_sample
        return out


@dataclass(frozen=True)
class Metric:
    """A named metric: `fields` documents the record fields it reads (besides ``id``), `compute`
    scores a list of records (raising `RecordError` for a malformed one)."""

    name: str
    summary: str
    fields: tuple[str, ...]
    compute: Callable[[Sequence[Record]], MetricResult]


# ----------------------------------------------------------------------------- record fields


def _get(record: Record, name: str) -> Any:
    if name not in record:
        raise FieldError(name, "missing")
    return record[name]


def _text_field(record: Record, name: str) -> str:
    value = _get(record, name)
    if not isinstance(value, str):
        raise FieldError(name, f"must be a string, got {type(value).__name__}")
    return value


def _as_answer_text(value: Any) -> str | None:
    """A reference answer as text: strings as is, numbers via str(), VQA-style {"answer": str}."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Mapping) and isinstance(value.get("answer"), str):
        return value["answer"]
    return None


def _answers(record: Record) -> list[str]:
    """``answers`` (non-empty list of strings, numbers or {"answer": str}) or else ``answer``."""
    if "answers" in record:
        values = record["answers"]
        if not isinstance(values, list) or not values:
            raise FieldError("answers", "must be a non-empty list of strings")
        texts = [_as_answer_text(v) for v in values]
        if any(t is None for t in texts):
            raise FieldError("answers", "every answer must be a string (or a number, or {'answer': string})")
        return texts
    if "answer" not in record:
        raise FieldError("answer", "missing (give 'answer' or 'answers')")
    answer = _as_answer_text(record["answer"])
    if answer is None:
        raise FieldError("answer", f"must be a string, got {type(record['answer']).__name__}")
    return [answer]


def _choices(record: Record) -> list[str] | None:
    if record.get("choices") is None:
        return None
    values = record["choices"]
    if not isinstance(values, list) or not values or not all(isinstance(c, str) for c in values):
        raise FieldError("choices", "must be a non-empty list of strings (the option texts, in order)")
    if len(values) > 26:
        raise FieldError("choices", f"at most 26 options, got {len(values)}")
    return values


def _num_choices(record: Record, choices: list[str] | None) -> int | None:
    if choices is not None:
        return len(choices)
    n = record.get("num_choices")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 26:
        raise FieldError("num_choices", f"must be an integer in 1..26, got {n!r}")
    return n


def _gold_letter(record: Record, num_choices: int | None) -> str:
    answer = _get(record, "answer")
    try:
        return choice.answer_letter(answer, num_choices)
    except ValueError as e:
        raise FieldError("answer", str(e)) from None


def _yes_no_field(record: Record, name: str = "answer") -> str:
    value = _text_field(record, name).strip().lower().replace(".", "")
    if value not in ("yes", "no"):
        raise FieldError(name, f"must be 'yes' or 'no', got {record[name]!r}")
    return value


def _category(record: Record) -> str | None:
    value = record.get("category")
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError("category", f"must be a string, got {type(value).__name__}")
    return value


def _sample_id(record: Record, index: int) -> Any:
    return record.get("id", record.get("question_id", index))


def _each(records: Sequence[Record], parse: Callable[[Record], Any]) -> list[Any]:
    """`parse` every record, locating the first bad one."""
    if not records:
        raise LlavakitError("no records to score")
    out = []
    for i, record in enumerate(records):
        try:
            out.append(parse(record))
        except FieldError as e:
            raise RecordError(i, e) from None
    return out


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


# ----------------------------------------------------------------------------- metric builders


def _mean_metric(
    name: str, summary: str, fields: tuple[str, ...], headline: str, sample: Callable[[Record], tuple[float, dict]]
) -> Metric:
    """A metric that is the mean of a per-sample score, broken down by ``category`` when present.
    `sample` returns (score, extra per-sample fields); an extra ``parsed`` of None counts as unparsed."""

    def compute(records: Sequence[Record]) -> MetricResult:
        samples = _each(records, lambda r: (*sample(r), _category(r)))
        per_sample, by_category = [], defaultdict(list)
        for i, (record, (score, extra, category)) in enumerate(zip(records, samples)):
            per_sample.append({"id": _sample_id(record, i), "score": score, **extra})
            if category is not None:
                by_category[category].append(score)
        details: dict[str, Any] = {}
        if any("parsed" in s for s in per_sample):
            details["unparsed"] = sum(s.get("parsed", "") is None for s in per_sample)
        if by_category:
            details["by_category"] = {c: {headline: _mean(v), "n": len(v)} for c, v in sorted(by_category.items())}
        scores = {headline: _mean([s["score"] for s in per_sample])}
        return MetricResult(name, len(records), scores, details, per_sample)

    return Metric(name, summary, fields, compute)


def _vqa_sample(mode: str, record: Record) -> tuple[float, dict]:
    prediction, answers = _text_field(record, "prediction"), _answers(record)
    return vqa.vqa_accuracy(prediction, answers, mode=mode), {}


def _text_sample(fn: Callable[[str, list[str]], float], record: Record) -> tuple[float, dict]:
    return fn(_text_field(record, "prediction"), _answers(record)), {}


def _choice_sample(record: Record) -> tuple[float, dict]:
    prediction, choices = _text_field(record, "prediction"), _choices(record)
    num_choices = _num_choices(record, choices)
    gold = _gold_letter(record, num_choices)
    parsed = choice.extract_choice_letter(prediction, choices, num_choices=num_choices)
    return float(parsed == gold), {"parsed": parsed, "gold": gold}


def _scienceqa_sample(mode: str, record: Record) -> tuple[float, dict]:
    prediction, choices = _text_field(record, "prediction"), _choices(record)
    gold = _gold_letter(record, _num_choices(record, choices))
    parsed = choice.scienceqa_letter(prediction, mode=mode)
    return float(parsed == gold), {"parsed": parsed, "gold": gold}


def _yes_no_samples(records: Sequence[Record], parsed_gold: list[tuple[str | None, str]]) -> list[dict[str, Any]]:
    return [
        {"id": _sample_id(record, i), "score": float(parsed == gold), "parsed": parsed}
        for i, (record, (parsed, gold)) in enumerate(zip(records, parsed_gold))
    ]


def _pope_metric(name: str, mode: str) -> Metric:
    def compute(records: Sequence[Record]) -> MetricResult:
        def parse(r: Record) -> tuple[str | None, str, bool, str | None]:
            prediction = _text_field(r, "prediction")
            unparsed = yesno.pope_is_unparsed(prediction, mode=mode)
            return yesno.parse_pope_answer(prediction, mode=mode), _yes_no_field(r), unparsed, _category(r)

        rows = _each(records, parse)
        counts = yesno.pope_counts([p for p, *_ in rows], [g for _, g, *_ in rows])
        details: dict[str, Any] = {"unparsed": sum(u for *_, u, _ in rows), "counts": asdict(counts)}
        groups = defaultdict(list)
        for p, g, _, c in rows:
            if c is not None:
                groups[c].append((p, g))
        if groups:
            details["by_category"] = {
                c: {**yesno.pope_metrics(yesno.pope_counts(*zip(*pairs))), "n": len(pairs)}
                for c, pairs in sorted(groups.items())
            }
        per_sample = _yes_no_samples(records, [(p, g) for p, g, *_ in rows])
        return MetricResult(name, len(records), yesno.pope_metrics(counts), details, per_sample)

    reading = "exact yes/no after lower+strip (lmms-eval)" if mode == "lmms_eval" else "negation word -> no, else yes"
    summary = f"POPE accuracy/precision/recall/F1/yes-ratio; replies read as {reading}"
    return Metric(name, summary, ("prediction", "answer (yes/no)", "category (optional)"), compute)


def _mme_metric(name: str, mode: str) -> Metric:
    def compute(records: Sequence[Record]) -> MetricResult:
        def parse(r: Record) -> tuple[str, str, str, str]:
            prediction, gold, name = _text_field(r, "prediction"), _yes_no_field(r), _text_field(r, "category")
            try:
                category = yesno.mme_category(name)
            except ValueError as e:
                raise FieldError("category", str(e)) from None
            image = _get(r, "image_id")
            if not isinstance(image, (str, int)) or isinstance(image, bool):
                raise FieldError("image_id", f"must be a string or an integer, got {type(image).__name__}")
            return category, str(image), yesno.parse_mme_answer(prediction, mode=mode), gold

        rows = _each(records, parse)
        result = yesno.mme_scores([(c, img, p == g, p == "other") for c, img, p, g in rows])
        scores = {k: result[k] for k in ("perception", "cognition", "total", "total_normalized")}
        scores.update({c: s["score"] for c, s in result["subtasks"].items()})
        details = {"unparsed": sum(p == "other" for _, _, p, _ in rows), "by_category": result["subtasks"]}
        per_sample = _yes_no_samples(records, [(p, g) for _, _, p, g in rows])
        return MetricResult(name, len(records), scores, details, per_sample)

    reading = "lmms-eval" if mode == "lmms_eval" else "MME's calculation.py"
    summary = f"MME acc + acc+ per subtask, perception and cognition totals; replies read as in {reading}"
    return Metric(name, summary, ("prediction", "answer (yes/no)", "category (MME subtask)", "image_id"), compute)


def _judge_pair(record: Record) -> judge.ScorePair | None:
    if "review" in record:
        return judge.parse_judge_scores(_text_field(record, "review"))
    if "scores" not in record:
        raise FieldError("review", "missing (give the judge's reply as 'review' or the pair as 'scores')")
    scores = record["scores"]
    if (
        not isinstance(scores, list)
        or len(scores) != 2
        or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)
    ):
        raise FieldError("scores", "must be [reference_score, model_score]")
    return judge.judge_pair_from_scores(scores)


def _llava_bench(records: Sequence[Record]) -> MetricResult:
    rows = _each(records, lambda r: (_judge_pair(r), _category(r)))
    overall = judge.relative_score(p for p, _ in rows)
    groups = defaultdict(list)
    for pair, category in rows:
        if category is not None:
            groups[category].append(pair)
    details: dict[str, Any] = {"failed": overall["failed"], "judged": overall["judged"]}
    if groups:
        details["by_category"] = {c: {**judge.relative_score(v), "n": len(v)} for c, v in sorted(groups.items())}
    per_sample = [
        {"id": _sample_id(r, i), "score": None if p is None else p[1], "reference_score": None if p is None else p[0]}
        for i, (r, (p, _)) in enumerate(zip(records, rows))
    ]
    scores = {k: overall[k] for k in ("relative", "reference", "model")}
    return MetricResult("llava_bench", len(records), scores, details, per_sample)


_ANSWERS = "answer or answers"

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _mean_metric("vqav2", "VQA accuracy, lmms-eval's VQAv2 normalization of prediction and answers",
                     ("prediction", _ANSWERS), "accuracy", partial(_vqa_sample, "lmms_eval")),
        _mean_metric("vqav2_official", "VQA accuracy, GT-Vision-Lab vqaEval.py normalization",
                     ("prediction", _ANSWERS), "accuracy", partial(_vqa_sample, "official")),
        _mean_metric("textvqa", "VQA accuracy with the EvalAI answer processor on both sides (lmms-eval TextVQA)",
                     ("prediction", _ANSWERS), "accuracy", partial(_vqa_sample, "evalai")),
        _mean_metric("exact_match", "GQA exact match: lower-case, no punctuation, stripped",
                     ("prediction", _ANSWERS), "exact_match", partial(_text_sample, text.exact_match)),
        _mean_metric("accuracy", "synthetic tasks: case-insensitive, no trailing punctuation or leading article",
                     ("prediction", _ANSWERS), "accuracy", partial(_text_sample, text.short_answer_accuracy)),
        _mean_metric("reasoned_accuracy", "synthetic tasks answered after reasoning: `accuracy` of the words after "
                     "the reply's last ', so '", ("prediction", _ANSWERS), "accuracy",
                     partial(_text_sample, text.reasoned_accuracy)),
        _mean_metric("anls", "ANLS (DocVQA, InfoVQA): normalized Levenshtein similarity, 0 below 0.5",
                     ("prediction", _ANSWERS), "anls", partial(_text_sample, text.anls)),
        _mean_metric("relaxed_accuracy", "ChartQA relaxed accuracy: numbers within 5%, else case-insensitive match",
                     ("prediction", _ANSWERS), "relaxed_accuracy", partial(_text_sample, text.relaxed_accuracy)),
        _mean_metric("multiple_choice", "option-letter accuracy (AI2D, MMBench, MMMU, BLINK...)",
                     ("prediction", "answer (letter or 0-based index)", "choices (optional)", "num_choices (optional)"),
                     "accuracy", _choice_sample),
        _mean_metric("scienceqa_img", "ScienceQA-IMG accuracy, replies read as lmms-eval does",
                     ("prediction", "answer (letter or 0-based index)", "choices (optional)"),
                     "accuracy", partial(_scienceqa_sample, "lmms_eval")),
        _mean_metric("scienceqa_img_llava", "ScienceQA-IMG accuracy, replies read as LLaVA's eval_science_qa.py does",
                     ("prediction", "answer (letter or 0-based index)", "choices (optional)"),
                     "accuracy", partial(_scienceqa_sample, "llava")),
        _pope_metric("pope", "lmms_eval"),
        _pope_metric("pope_official", "official"),
        _mme_metric("mme", "lmms_eval"),
        _mme_metric("mme_official", "official"),
        Metric("llava_bench", "LLaVA-Bench relative score from judge replies; failed judgements left out",
               ("review (judge reply) or scores [reference, model]", "category (optional)"), _llava_bench),
    )
}  # fmt: skip


def get_metric(name: str) -> Metric:
    """The registered metric `name`; KeyError listing the known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def score(name: str, records: Sequence[Record]) -> MetricResult:
    """Score `records` with the registered metric `name`."""
    return get_metric(name).compute(records)
