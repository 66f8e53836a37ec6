"""LLM-as-judge scoring (LLaVA-Bench): parse the judge's "reference-score model-score" reply and turn
the pairs into the relative score. The HTTP client that asks the judge lives elsewhere."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

ScorePair = tuple[float, float]


def parse_judge_scores(reply: str) -> ScorePair | None:
    """(reference score, model score) from a judge reply, or None when the judgement failed.

    The judge is told to put the two scores (1-10) alone on its first line. As lmms-eval does: strip
    the reply, take its first line, read commas and semicolons as spaces, and take the first two
    numbers (``"8 7"``, ``"8, 7"``, ``"8.5;7"``). Fewer than two numbers, or a negative one (-1 is the
    references' failure marker), is a failure. LLaVA's original parser is stricter (exactly two
    space-separated tokens); both read the well-formed replies the same.
    """
    lines = reply.strip().split("\n")
    numbers = _NUMBER.findall(lines[0].replace(",", " ").replace(";", " "))
    if len(numbers) < 2:
        return None
    pair = (float(numbers[0]), float(numbers[1]))
    return None if min(pair) < 0 else pair


def relative_score(pairs: Iterable[ScorePair | None], *, count_failures: bool = False) -> dict[str, float | int | None]:
    """Aggregate judged pairs into LLaVA-Bench's relative score.

    relative = 100 * mean(model scores) / mean(reference scores) over the successful judgements;
    failed ones (None) are counted in ``failed`` and left out. ``count_failures=True`` reproduces
    LLaVA's ``summarize_gpt_review.py`` and lmms-eval, which average failures in as (-1, -1).
    ``reference`` and ``model`` are the two means (1-10 scale); relative is None without judgements
    or with a zero reference mean. The references round the means to 3 decimals before dividing;
    this does not.
    """
    pairs = list(pairs)
    ok = [p for p in pairs if p is not None]
    failed = len(pairs) - len(ok)
    used = ok + [(-1.0, -1.0)] * failed if count_failures else ok
    reference = math.fsum(p[0] for p in used) / len(used) if used else None
    model = math.fsum(p[1] for p in used) / len(used) if used else None
    relative = 100.0 * model / reference if reference else None
    return {"relative": relative, "reference": reference, "model": model, "judged": len(ok), "failed": failed}


def judge_pair_from_scores(scores: Sequence[float]) -> ScorePair | None:
    """A pair from an already-parsed ``[reference, model]`` list (LLaVA's review files store it as
    ``tuple``); negative values are the failure marker."""
    pair = (float(scores[0]), float(scores[1]))
    return None if min(pair) < 0 else pair
