"""Yes/no benchmarks: POPE (accuracy, precision, recall, F1, yes-ratio) and MME (acc + acc+ per subtask,
perception and cognition totals). Each has an lmms-eval reading of replies (default) and the official
one, because they disagree on replies that are not a bare "yes"/"no"."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

POPE_MODES = ("lmms_eval", "official")
MME_MODES = ("lmms_eval", "official")
MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_MAX_SCORE = 200.0 * (len(MME_PERCEPTION) + len(MME_COGNITION))  # 2800: acc and acc+ are 100 each


def _pope_words(reply: str) -> list[str]:
    first_sentence = reply.split(".")[0]
    return first_sentence.replace(",", "").split(" ")


def parse_pope_answer(reply: str, *, mode: str = "lmms_eval") -> str | None:
    """``"yes"``, ``"no"`` or None (unparsed) for a POPE reply.

    ``"lmms_eval"`` (default): the lower-cased, stripped reply must be exactly ``yes`` or ``no``
    (``"Yes."`` is unparsed). ``"official"`` (POPE's and LLaVA's ``eval_pope.py``): keep the text
    before the first ``.``, delete commas, split on single spaces; ``no``, ``No`` or ``not`` among the
    words -> ``"no"``, anything else -> ``"yes"``. The official rule never fails: a reply without any
    yes/no word (``"There is a dog"``, ``"NO"``, ``"No!"``) counts as **yes**; `pope_is_unparsed`
    flags those for the report.
    """
    if mode == "lmms_eval":
        text = reply.lower().strip()
        return text if text in ("yes", "no") else None
    if mode == "official":
        words = _pope_words(reply)
        return "no" if any(w in ("No", "not", "no") for w in words) else "yes"
    raise ValueError(f"unknown POPE mode {mode!r}; choose from {', '.join(POPE_MODES)}")


def pope_is_unparsed(reply: str, *, mode: str = "lmms_eval") -> bool:
    """Whether the reply was not understood: None from `parse_pope_answer` (lmms_eval), or, for the
    official rule, no ``yes``/``Yes``/``no``/``No``/``not`` word (the reply defaulted to yes)."""
    if mode == "official":
        return not any(w in ("Yes", "yes", "No", "no", "not") for w in _pope_words(reply))
    return parse_pope_answer(reply, mode=mode) is None


@dataclass(frozen=True)
class PopeCounts:
    """Confusion counts with "yes" as the positive class. Unparsed replies are in none of tp/fp/tn/fn;
    they are counted by their gold answer in `unparsed_yes` / `unparsed_no`."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    unparsed_yes: int = 0
    unparsed_no: int = 0

    @property
    def unparsed(self) -> int:
        return self.unparsed_yes + self.unparsed_no

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.unparsed


def pope_counts(parsed: Iterable[str | None], gold: Iterable[str]) -> PopeCounts:
    """Count (parsed reply, gold) pairs; gold must be ``"yes"``/``"no"``, parsed may be None."""
    c: dict[str, int] = defaultdict(int)
    for p, g in zip(parsed, gold, strict=True):
        if g not in ("yes", "no") or p not in ("yes", "no", None):
            raise ValueError(f"POPE counts need yes/no answers, got reply {p!r} for gold {g!r}")
        if p is None:
            c["unparsed_" + g] += 1
        else:
            c[("t" if p == g else "f") + ("p" if p == "yes" else "n")] += 1
    return PopeCounts(**c)


def pope_metrics(counts: PopeCounts) -> dict[str, float]:
    """POPE's numbers from confusion counts.

    accuracy = (TP + TN) / N with unparsed replies counted wrong; precision = TP / (TP + FP);
    recall = TP / (TP + FN); F1 their harmonic mean (each 0 when its denominator is 0); yes_ratio =
    replies parsed as yes / N (the official definition); gt_yes_ratio = gold yes / N, which is what
    lmms-eval's ``pope_yes_ratio`` actually reports. Unparsed replies are left out of precision and
    recall, as in lmms-eval (the official rule has none).
    """
    n = counts.n
    precision = counts.tp / (counts.tp + counts.fp) if counts.tp + counts.fp else 0.0
    recall = counts.tp / (counts.tp + counts.fn) if counts.tp + counts.fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (counts.tp + counts.tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (counts.tp + counts.fp) / n if n else 0.0,
        "gt_yes_ratio": (counts.tp + counts.fn + counts.unparsed_yes) / n if n else 0.0,
    }


def parse_mme_answer(reply: str, *, mode: str = "lmms_eval") -> str:
    """``"yes"``, ``"no"`` or ``"other"`` for an MME reply.

    ``"official"`` (MME's ``eval_tool/calculation.py``): lower-case; exactly yes/no, else look at the
    first 4 characters: containing ``yes`` -> yes, else containing ``no`` -> no, else other (so
    ``"Not sure"`` -> no). ``"lmms_eval"`` (default) first strips whitespace and deletes every ``.``
    and maps the one-letter replies ``y``/``n`` to yes/no.
    """
    if mode == "lmms_eval":
        text = reply.lower().strip().replace(".", "")
        if len(text) == 1 and text in "yn":
            return "yes" if text == "y" else "no"
    elif mode == "official":
        text = reply.lower()
    else:
        raise ValueError(f"unknown MME mode {mode!r}; choose from {', '.join(MME_MODES)}")
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def mme_category(name: str) -> str:
    """The canonical MME subtask name for `name` (case-insensitive); ValueError if it is none."""
    for canonical in MME_PERCEPTION + MME_COGNITION:
        if name.lower() == canonical.lower():
            return canonical
    raise ValueError(f"unknown MME subtask {name!r}; expected one of {', '.join(MME_PERCEPTION + MME_COGNITION)}")


def mme_scores(samples: Sequence[tuple[str, str, bool, bool]]) -> dict:
    """MME scores from (subtask, image id, correct, unparsed) per question.

    Per subtask: acc = correct questions / questions, acc+ = images whose questions are all correct /
    images, score = 100 * acc + 100 * acc+ (max 200). MME asks exactly two questions per image; any
    other count raises ValueError (both references assert it). perception / cognition = sum of the
    scores of the subtasks of that kind present; total = their sum; total_normalized = total / 2800
    (meaningful only with all 14 subtasks).
    """
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    unparsed: dict[str, int] = defaultdict(int)
    for category, image, correct, other in samples:
        images[category][image].append(correct)
        unparsed[category] += other
    subtasks = {}
    for category in sorted(images, key=(MME_PERCEPTION + MME_COGNITION).index):
        per_image = images[category]
        for image, results in per_image.items():
            if len(results) != 2:
                raise ValueError(f"MME subtask {category!r}: image {image!r} has {len(results)} questions, MME pairs 2")
        questions = [ok for results in per_image.values() for ok in results]
        acc = sum(questions) / len(questions)
        acc_plus = sum(all(results) for results in per_image.values()) / len(per_image)
        subtasks[category] = {
            "score": 100 * acc + 100 * acc_plus,
            "acc": acc,
            "acc_plus": acc_plus,
            "questions": len(questions),
            "images": len(per_image),
            "unparsed": unparsed[category],
        }
    perception = sum(s["score"] for c, s in subtasks.items() if c in MME_PERCEPTION)
    cognition = sum(s["score"] for c, s in subtasks.items() if c in MME_COGNITION)
    return {
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "total_normalized": (perception + cognition) / MME_MAX_SCORE,
        "subtasks": subtasks,
    }
