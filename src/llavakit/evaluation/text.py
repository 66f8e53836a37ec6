"""String-matching metrics: exact match (GQA), the synthetic tasks' accuracy, ANLS (DocVQA, InfoVQA)
and ChartQA's relaxed accuracy. Every function scores one sample; averaging happens in `metrics`."""

from __future__ import annotations

import string
from collections.abc import Sequence

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
_LEADING_ARTICLES = ("a ", "an ", "the ")


def normalize_exact(text: str) -> str:
    """GQA-style normalization: lower-case, delete every ASCII punctuation character (anywhere, so
    ``"t-shirt"`` -> ``"tshirt"``), strip surrounding whitespace."""
    return text.lower().translate(_DELETE_PUNCTUATION).strip()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if `normalize_exact(prediction)` equals `normalize_exact` of any answer, else 0.0.

    This is lmms-eval's GQA metric (``exact_match`` with ``ignore_case`` and ``ignore_punctuation``)
    plus the surrounding-whitespace strip, which lmms-eval leaves to its model wrappers. LLaVA's own
    GQA script only strips a trailing ``.`` and lower-cases; the two agree on one-word answers.
    """
    pred = normalize_exact(prediction)
    return float(any(pred == normalize_exact(a) for a in answers))


def normalize_short_answer(text: str) -> str:
    """Normalization for the synthetic tasks' one-word answers: strip, lower-case, drop trailing
    punctuation (``"red."`` -> ``"red"``) and one leading article (``"a cube"`` -> ``"cube"``)."""
    text = text.strip().lower().rstrip(string.punctuation + string.whitespace)
    for article in _LEADING_ARTICLES:
        if text.startswith(article):
            return text[len(article) :].lstrip()
    return text


def short_answer_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if `normalize_short_answer(prediction)` equals that of any answer, else 0.0."""
    pred = normalize_short_answer(prediction)
    return float(any(pred == normalize_short_answer(a) for a in answers))


REASONED_MARKER = ", so "  # what follows it is a reasoned reply's answer (synth.questions.relation_answer)


def reasoned_answer(prediction: str) -> str:
    """The answer a reasoned reply ends with: the words after its last ", so " ("red left, blue
    right, so left." -> "left."), or the whole reply when it has none."""
    return prediction.rsplit(REASONED_MARKER, 1)[-1]


def reasoned_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """`short_answer_accuracy` of the reply's `reasoned_answer`."""
    return short_answer_accuracy(reasoned_answer(prediction), answers)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character, each costing 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalized_levenshtein(prediction: str, answer: str) -> float:
    """The DocVQA scripts' normalized distance NL: the edit distance between the two strings after
    strip + lower-case + whitespace runs collapsed to one space, divided by the longer *raw* length
    (``len(s.upper())``, as the scripts do; 0.0 when both are empty)."""
    pred = " ".join(prediction.strip().lower().split())
    gold = " ".join(answer.strip().lower().split())
    length = max(len(answer.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else levenshtein(gold, pred) / length


def anls(prediction: str, answers: Sequence[str], *, threshold: float = 0.5, inclusive: bool = True) -> float:
    """Normalized Levenshtein similarity of one answer (the per-question term of ANLS), in [0, 1].

    s = 1 - min over answers of `normalized_levenshtein`; s is replaced by 0 when it falls below
    `threshold`. With ``inclusive=True`` (default: the official DocVQA/InfographicVQA scripts and
    lmms-eval) s exactly at the threshold is kept, so NL = 0.5 scores 0.5; ``inclusive=False`` is the
    paper's formula (0 when NL >= 0.5). ANLS is the mean of this over questions.
    """
    if not answers:
        raise ValueError("ANLS needs at least one reference answer")
    similarity = 1.0 - min(normalized_levenshtein(prediction, a) for a in answers)
    below = similarity < threshold if inclusive else similarity <= threshold
    return 0.0 if below else similarity


def _to_float(text: str) -> float | None:
    """``float(text)``; a trailing ``%`` divides by 100 (``"45%"`` -> 0.45); None when not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, *, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed match (pix2struct's definition, used by lmms-eval).

    Both strings are stripped. If both parse as numbers (`_to_float`: ``"45%"`` is 0.45) and the
    target is non-zero, the prediction is correct when |pred - target| / |target| <= 5%. Otherwise
    (non-numbers, or a zero target) it needs a case-insensitive exact string match. Consequences of
    the reference's percent rule: ``"45%"`` matches ``"0.45"`` but not ``"45"``.
    """
    prediction, target = prediction.strip(), target.strip()
    pred_value, target_value = _to_float(prediction), _to_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str], *, max_relative_change: float = 0.05) -> float:
    """1.0 if `relaxed_correctness` holds for any answer (ChartQA has one), else 0.0."""
    return float(any(relaxed_correctness(prediction, a, max_relative_change=max_relative_change) for a in answers))
