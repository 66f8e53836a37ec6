"""The balance report: numbers (JSON), a readable summary (Markdown) and entry histograms (PNG)."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import numpy as np

from llavakit.curate.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def _rows(ids, entries, counts, probs, before, after, expected) -> list[dict]:
    return [
        {
            "id": int(i),
            "entry": entries[i],
            "count": int(counts[i]),
            "keep_prob": round(float(probs[i]), 6),
            "before": int(before[i]),
            "expected_after": round(float(expected[i]), 3),
            "after": int(after[i]),
        }
        for i in ids
    ]


def summarize(entries, counts, probs, before, after, expected, meta: dict, options, sources: dict) -> dict:
    """Totals, and the head (most frequent) and tail (rarest seen) entries before balancing."""
    t = options.threshold
    order = np.lexsort((np.arange(len(entries)), -before))  # by count descending, then id
    seen = np.flatnonzero(before > 0)
    tail = seen[np.lexsort((seen, before[seen]))][: options.head]
    pairs = meta["pairs"]
    return {
        "threshold": t,
        "seed": options.seed,
        "keep_unmatched": options.keep_unmatched,
        "pairs": pairs,
        "pairs_matched": meta["pairs_matched"],
        "pairs_kept": meta["kept"],
        "kept_fraction": round(meta["kept"] / pairs, 6) if pairs else 0.0,
        "entries": len(entries),
        "entries_matched_before": int((before > 0).sum()),
        "entries_matched_after": int((after > 0).sum()),
        "entries_over_threshold_before": int((before > t).sum()),
        "entries_over_threshold_after": int((after > t).sum()),
        "max_before": int(before.max(initial=0)),
        "max_after": int(after.max(initial=0)),
        "max_expected_after": round(float(expected.max(initial=0.0)), 3),
        "matches_before": int(before.sum()),
        "matches_after": int(after.sum()),
        "seconds": round(meta["seconds"], 3),
        "options": asdict(options),
        "sources": sources,
        "head": _rows(order[: options.head], entries, counts, probs, before, after, expected),
        "tail": _rows(tail, entries, counts, probs, before, after, expected),
    }


def _table(rows: list[dict]) -> list[str]:
    out = ["| entry | count | keep prob | before | expected after | after |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['entry'].replace('|', '/')} | {r['count']} | {r['keep_prob']:.4g} | {r['before']} "
            f"| {r['expected_after']:.1f} | {r['after']} |"
        )
    return out


def markdown(report: dict) -> str:
    r = report
    lines = [
        "# Balance report",
        "",
        f"Threshold T = {r['threshold']}, seed {r['seed']}.",
        "",
        f"- pairs: {r['pairs']} read, {r['pairs_matched']} with at least one entry, **{r['pairs_kept']} kept** "
        f"({100 * r['kept_fraction']:.2f}%)",
        f"- entries matched: {r['entries_matched_before']} before, {r['entries_matched_after']} after "
        f"(of {r['entries']})",
        f"- entries above T: {r['entries_over_threshold_before']} before, {r['entries_over_threshold_after']} after; "
        f"largest count {r['max_before']} before, {r['max_after']} after "
        f"(largest expectation {r['max_expected_after']})",
        f"- entry matches: {r['matches_before']} before, {r['matches_after']} after",
        "",
        "![entry histograms](entry_hist.png)",
        "",
        "## Head (most frequent entries)",
        "",
        *_table(r["head"]),
        "",
        "## Tail (rarest entries seen)",
        "",
        *_table(r["tail"]),
        "",
    ]
    return "\n".join(lines)


def plot_png(before: np.ndarray, after: np.ndarray, threshold: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    # Fixed margins: an automatic layout costs more than the whole pass over a small pool.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    for arr, label in ((before, "before"), (after, "after")):
        ranked = np.sort(arr[arr > 0])[::-1]
        if ranked.size:
            # a few hundred log-spaced ranks draw the same curve as 500K points, much faster
            ranks = np.unique(np.geomspace(1, ranked.size, 400).astype(np.int64))
            ax1.loglog(ranks, ranked[ranks - 1], label=label)
    ax1.axhline(threshold, color="gray", ls="--", lw=1, label=f"T = {threshold}")
    ax1.set(xlabel="entry rank", ylabel="pairs with the entry", title="rank-frequency")
    ax1.legend()
    top = max(int(before.max(initial=1)), int(after.max(initial=1)), threshold, 2)
    bins = np.unique(np.geomspace(1, top + 1, 40).astype(np.int64))
    for arr, label in ((before, "before"), (after, "after")):
        hist, _ = np.histogram(arr[arr > 0], bins=bins)
        ax2.stairs(hist, bins, lw=1.5, label=label)
    ax2.axvline(threshold, color="gray", ls="--", lw=1)
    ax2.set(xscale="log", yscale="log", xlabel="pairs with the entry", ylabel="entries", title="entry frequency")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.minorticks_off()  # hundreds of log minor ticks cost more to draw than everything else
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(
    folder: str | Path, report: dict, before: np.ndarray, after: np.ndarray, expected: np.ndarray, threshold: int
) -> None:
    """report.json, report.md, entry_hist.png and per_entry.npz (before, after, expected_after by entry id)."""
    folder = Path(folder)
    buf = io.BytesIO()
    np.savez(buf, before=before, after=after, expected_after=expected)
    atomic_write_bytes(folder / "per_entry.npz", buf.getvalue())
    atomic_write_bytes(folder / "entry_hist.png", plot_png(before, after, threshold))
    atomic_write_text(folder / "report.md", markdown(report))
    atomic_write_json(folder / "report.json", report, indent=None)
