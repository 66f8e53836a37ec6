"""``curate balance``: down-sample pairs of frequent entries so that no concept dominates.

Rule (MetaCLIP): with per-entry pair counts c(e) and threshold T, entry e keeps a pair with
probability p(e) = min(1, T / c(e)), and a pair survives if any of its entries keeps it. Pairs with
no entry are dropped (kept with ``keep_unmatched``). An entry seen in a pair alone is thus kept in
min(c(e), T) pairs in expectation; one that shares pairs with rarer entries keeps more, since those
pairs survive through the rarer entry (the report gives the exact expectation per entry).

Each draw is a hash, not a random-number stream:

    u(seed, pair, e) = top 53 bits of BLAKE2b-64(pair_digest || utf8(e), key="llavakit-curate:<seed>") / 2**53

where pair_digest is a hash of the record's canonical JSON (``records.pair_digest``). Entry e keeps
the pair when u < p(e). The decision for a pair therefore depends only on (seed, record content,
its entries, the counts): a resumed, sharded or re-ordered run decides exactly as one uninterrupted
run, and identical duplicate records are kept or dropped together.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llavakit.curate.errors import CurationError
from llavakit.curate.match import MatchOptions, chunk_matches, load_counts, state_path
from llavakit.curate.matcher import Matcher
from llavakit.curate.metadata import entries_fingerprint, load_entries
from llavakit.curate.records import Record, pair_digest, to_jsonl_line
from llavakit.curate.report import summarize, write_report
from llavakit.curate.stream import PassOptions, Position, State, inputs_fingerprint, load_state, run_pass


@dataclass(frozen=True)
class BalanceOptions:
    threshold: int
    seed: int = 0
    keep_unmatched: bool = False
    chunk_size: int = 10_000  # records per chunk (does not change results)
    checkpoint_seconds: float = 30.0  # 0: after every chunk (does not change results)
    head: int = 20  # entries listed in the report's head and tail tables

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise CurationError(f"threshold must be at least 1, got {self.threshold}")
        if self.chunk_size < 1:
            raise CurationError(f"chunk size must be at least 1, got {self.chunk_size}")


def keep_probabilities(counts: np.ndarray, threshold: int) -> np.ndarray:
    """p(e) = min(1, T / c(e)); entries never seen get 1."""
    return np.minimum(1.0, threshold / np.maximum(np.asarray(counts, dtype=np.float64), 1.0))


def uniform(seed: int, pair: bytes, entry: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, pair, entry); see the module docstring."""
    h = hashlib.blake2b(pair + entry.encode("utf-8"), digest_size=8, key=f"llavakit-curate:{seed}".encode())
    return (int.from_bytes(h.digest(), "big") >> 11) / 2.0**53


def keep_pair(ids: Sequence[int], probs: Sequence[float], seed: int, pair: bytes, entries: Sequence[str]) -> bool:
    """True when any entry of the pair keeps it."""
    return any(uniform(seed, pair, entries[i]) < probs[i] for i in ids)


def keep_chance(ids: Sequence[int], probs: Sequence[float]) -> float:
    """P(pair kept) = 1 - prod(1 - p(e)): the draws of different entries are independent."""
    return 1.0 - math.prod(1.0 - probs[i] for i in ids)


@dataclass
class ChunkDecisions:
    """What one chunk adds: the kept lines, and entry ids to count before, after and in expectation."""

    lines: list[bytes] = field(default_factory=list)
    before: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    expected_ids: list[int] = field(default_factory=list)
    expected_weights: list[float] = field(default_factory=list)


def decide_chunk(
    chunk: list[Record],
    matched: list[list[int]],
    probs: Sequence[float],
    entries: Sequence[str],
    options: BalanceOptions,
) -> ChunkDecisions:
    """Keep or drop each record of a chunk (pure: the same inputs always give the same decisions)."""
    d = ChunkDecisions()
    for rec, ids in zip(chunk, matched, strict=True):
        if not ids:
            keep = options.keep_unmatched
        else:
            # Some entry with p = 1 keeps the pair for sure: no need to hash (keep_pair would agree).
            keep = max(probs[i] for i in ids) >= 1.0 or keep_pair(
                ids, probs, options.seed, pair_digest(rec.value), entries
            )
            d.before.extend(ids)
            d.expected_ids.extend(ids)
            d.expected_weights.extend([keep_chance(ids, probs)] * len(ids))
        if keep:
            d.lines.append(to_jsonl_line(rec))
            d.after.extend(ids)
    return d


def _open_output(out: Path, partial: Path, state: State | None):
    """The partial output, cut back to the size recorded at the last checkpoint."""
    if state is None:
        return open(partial, "wb")
    size = state.meta["out_bytes"]
    if not partial.exists() and out.exists() and out.stat().st_size == size:
        os.replace(out, partial)  # died between publishing the output and removing the checkpoint
    if not partial.exists():
        raise CurationError(
            f"{partial}: missing, but {state_path(out)} says {size} bytes were written; pass --restart to start over"
        )
    f = open(partial, "r+b")
    f.truncate(size)  # drop what a killed run wrote after its last checkpoint
    f.seek(size)
    return f


def balance_files(
    inputs: list[str | Path],
    metadata: str | Path,
    counts: str | Path,
    out: str | Path,
    options: BalanceOptions,
    report_dir: str | Path | None = None,
    restart: bool = False,
    quiet: bool = False,
) -> dict:
    """Stream the inputs, write the kept records to ``out`` (JSONL) and a report; returns the report."""
    out = Path(out)
    if out.suffix == ".json":
        raise CurationError(f"{out}: the balanced output is JSON lines; name it .jsonl")
    report_dir = Path(report_dir) if report_dir else out.parent / f"{out.stem}.report"
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = load_entries(metadata)
    counts_arr, cdoc = load_counts(counts, entries)
    mopts = MatchOptions(**cdoc["match_options"])
    matcher = Matcher(entries, mopts.case_sensitive)
    probs_arr = keep_probabilities(counts_arr, options.threshold)
    probs = probs_arr.tolist()  # list indexing is much faster than numpy scalars in the loop
    identity = {
        "kind": "balance",
        "inputs": inputs_fingerprint(inputs),
        "metadata_sha256": entries_fingerprint(entries),
        "counts_sha256": hashlib.sha256(counts_arr.tobytes()).hexdigest(),
        "match_options": mopts.matching(),
        "threshold": options.threshold,
        "seed": options.seed,
        "keep_unmatched": options.keep_unmatched,
    }
    spath, partial = state_path(out), out.with_name(out.name + ".partial")
    state = None if restart else load_state(spath, identity)
    f = _open_output(out, partial, state)
    if state is None:
        n = len(entries)
        state = State(
            Position(),
            {"pairs": 0, "pairs_matched": 0, "kept": 0, "out_bytes": 0, "seconds": 0.0},
            {"before": np.zeros(n, np.int64), "after": np.zeros(n, np.int64), "expected": np.zeros(n)},
        )
    meta, arr = state.meta, state.arrays

    def process(chunk: list[Record], path: str | Path) -> None:
        matched = chunk_matches(chunk, path, matcher, mopts)
        d = decide_chunk(chunk, matched, probs, entries, options)
        data = b"".join(d.lines)
        f.write(data)
        f.flush()
        n = len(entries)
        arr["before"] += np.bincount(np.asarray(d.before, np.int64), minlength=n)
        arr["after"] += np.bincount(np.asarray(d.after, np.int64), minlength=n)
        arr["expected"] += np.bincount(
            np.asarray(d.expected_ids, np.int64), weights=np.asarray(d.expected_weights), minlength=n
        )
        meta["pairs"] += len(chunk)
        meta["pairs_matched"] += sum(1 for ids in matched if ids)
        meta["kept"] += len(d.lines)
        meta["out_bytes"] += len(data)

    def sync() -> None:
        os.fsync(f.fileno())  # the bytes a checkpoint counts must be on disk before it

    with f:
        passes = PassOptions(options.chunk_size, options.checkpoint_seconds, "balance", quiet)
        run_pass(inputs, identity, state, spath, process, passes, sync)
        sync()
    report = summarize(
        entries,
        counts_arr,
        probs_arr,
        arr["before"],
        arr["after"],
        arr["expected"],
        meta,
        options,
        {
            "inputs": [x["path"] for x in identity["inputs"]],
            "metadata": str(metadata),
            "counts": str(counts),
            "output": str(out),
            "match_options": mopts.matching(),
        },
    )
    write_report(report_dir, report, arr["before"], arr["after"], arr["expected"], options.threshold)
    os.replace(partial, out)
    spath.unlink(missing_ok=True)
    return report
