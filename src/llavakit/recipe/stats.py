"""The lab's statistics: per arm, the mean and spread of a score over seeds; per arm against the
baseline, the per-seed (paired) difference: its mean, spread, a 95% t-interval and how many
seeds the arm wins, ties and loses. Seeds pair runs: seed k of both arms saw the same world and
the same components, so the paired difference removes what the seed alone decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Two-sided 95% quantiles of Student's t, by degrees of freedom (the standard table; no SciPy).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # beyond the table: the normal quantile with the first Cornish-Fisher term
    return z + (z**3 + z) / (4 * df)


def summary(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (None with one value) of ``values``."""
    array = np.asarray(values, dtype=float)
    return {"n": int(array.size), "mean": float(array.mean()) if array.size else None,
            "std": float(array.std(ddof=1)) if array.size > 1 else None}


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float], tie: float = 1e-9) -> dict:
    """``arm - baseline`` over the seeds both have: mean, std, 95% t-interval, wins/ties/losses."""
    seeds = sorted(set(arm) & set(baseline))
    diffs = np.array([arm[s] - baseline[s] for s in seeds], dtype=float)
    result = {**summary(diffs), "seeds": seeds, "ci95": None,
              "wins": int((diffs > tie).sum()), "ties": int((np.abs(diffs) <= tie).sum()),
              "losses": int((diffs < -tie).sum())}
    if diffs.size > 1 and result["std"] > tie:  # equal differences on every seed: no spread, no interval
        half = t_quantile_975(diffs.size - 1) * result["std"] / math.sqrt(diffs.size)
        result["ci95"] = [result["mean"] - half, result["mean"] + half]
    return result


def verdict(diff: dict) -> str:
    """A plain reading of a paired difference: what the interval excludes, else inconclusive."""
    if diff["n"] == 0:
        return "no paired seeds"
    if diff["ties"] == diff["n"]:
        return "no difference on any seed"
    if diff["ci95"] is None:
        if diff["n"] > 1:  # a t-interval of zero width would read a handful of seeds as certainty
            return f"{diff['mean']:+.3f} on every seed: no spread, no interval"
        return "one seed: no interval"
    low, high = diff["ci95"]
    if low > 0:
        return "better (interval above 0)"
    if high < 0:
        return "worse (interval below 0)"
    return "inconclusive (interval contains 0)"


def compare(scores: Mapping[str, Mapping[str, Mapping[int, float]]], baseline: str,
            pairs: Sequence[tuple[str, str]] = ()) -> dict:
    """``scores[task][arm][seed]`` -> per task: each arm's summary, each other arm's paired
    difference against ``baseline``, and under ``pairs`` the paired difference ``a - b`` of each
    further pair of arms (keyed "a - b")."""
    table = {}
    for task, arms in scores.items():
        base = arms.get(baseline, {})
        table[task] = {
            "arms": {arm: {**summary([by_seed[s] for s in sorted(by_seed)]), "scores": dict(sorted(by_seed.items()))}
                     for arm, by_seed in arms.items()},
            "vs_baseline": {arm: paired_difference(by_seed, base)
                            for arm, by_seed in arms.items() if arm != baseline},
            "pairs": {f"{a} - {b}": paired_difference(arms.get(a, {}), arms.get(b, {})) for a, b in pairs},
        }
        for diff in [*table[task]["vs_baseline"].values(), *table[task]["pairs"].values()]:
            diff["verdict"] = verdict(diff)
    return table
