"""Evaluation: benchmark metrics as pure functions, a registry naming them, and predictions files.

Per-sample scorers: `vqa_accuracy`, `exact_match`, `short_answer_accuracy`, `reasoned_accuracy`, `anls`,
`relaxed_accuracy`, `extract_choice_letter`, `scienceqa_letter`, `parse_pope_answer`,
`parse_mme_answer`, `parse_judge_scores`. Aggregates: `pope_metrics`, `mme_scores`, `relative_score`.
`METRICS` maps the names tasks use to `Metric` objects that score whole lists of records; see
docs/evaluation_metrics.md for the definitions and where they follow lmms-eval or the official
scorers.

Model-driven evaluation (docs/evaluation.md): `evaluate` (runner), task files (`load_task`,
`TaskSpec`), the LLM judge (`JudgeSettings`); imported on first use, since they need torch.
"""

from llavakit.evaluation.choice import answer_letter, extract_choice_letter, scienceqa_letter
from llavakit.evaluation.judge import parse_judge_scores, relative_score
from llavakit.evaluation.metrics import METRICS, FieldError, Metric, MetricResult, RecordError, get_metric, score
from llavakit.evaluation.predictions import PredictionsFormatError, read_predictions, write_predictions
from llavakit.evaluation.text import (
    anls,
    exact_match,
    levenshtein,
    normalized_levenshtein,
    reasoned_accuracy,
    relaxed_accuracy,
    relaxed_correctness,
    short_answer_accuracy,
)
from llavakit.evaluation.vqa import evalai_normalize, normalize_vqa_answer, vqa_accuracy
from llavakit.evaluation.yesno import mme_scores, parse_mme_answer, parse_pope_answer, pope_counts, pope_metrics

__all__ = [
    "METRICS",
    "FieldError",
    "Metric",
    "MetricResult",
    "PredictionsFormatError",
    "RecordError",
    "anls",
    "answer_letter",
    "evalai_normalize",
    "exact_match",
    "extract_choice_letter",
    "get_metric",
    "levenshtein",
    "mme_scores",
    "normalize_vqa_answer",
    "normalized_levenshtein",
    "parse_judge_scores",
    "parse_mme_answer",
    "parse_pope_answer",
    "pope_counts",
    "pope_metrics",
    "read_predictions",
    "reasoned_accuracy",
    "relative_score",
    "relaxed_accuracy",
    "relaxed_correctness",
    "scienceqa_letter",
    "score",
    "short_answer_accuracy",
    "vqa_accuracy",
    "write_predictions",
]

_LAZY = {
    "evaluate": "llavakit.evaluation.runner",
    "load_task": "llavakit.evaluation.task_spec",
    "TaskSpec": "llavakit.evaluation.task_spec",
    "JudgeSettings": "llavakit.evaluation.judge_client",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
