"""Benchmark: captions matched per second on one core, llavakit's Aho-Corasick matcher vs a naive
per-entry regex scan, on synthetic metadata and captions with a Zipf word distribution.

    python bench/curate_match.py                      # 10K, 100K and 500K entries; short and long captions
    python bench/curate_match.py --entries 500000 --out runs/bench/curate_match.json

Prints a table and writes JSON (captions/s of both, the ratio, device and date). The naive scan is
O(entries) per caption, so it runs on a time-boxed sample of the same captions; both must find the
same entries on that sample. "end-to-end" is `count_entries` (the `curate match` command without
the CLI) over a JSONL file of LLaVA records: parsing, matching, counting, checkpoints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from llavakit.curate.match import MatchOptions, count_entries
from llavakit.curate.matcher import Matcher
from llavakit.curate.metadata import load_entries
from llavakit.curate.text import entry_key, spaced

SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < n:
        words.setdefault("".join(rng.choice(SYLLABLES) for _ in range(rng.choice([1, 2, 2, 3, 3, 4]))), None)
    return list(words)  # index = frequency rank


def metadata(n: int, vocab: list[str], rng: random.Random) -> list[str]:
    """Like MetaCLIP's mix: ~62% unigrams (the most frequent words), ~22% bigrams, ~16% multi-word titles."""
    entries: dict[str, None] = dict.fromkeys(vocab[: int(0.62 * n)])
    while len(entries) < n:
        k = 2 if rng.random() < 0.6 else rng.randint(2, 4)
        entries.setdefault(" ".join(vocab[min(int(rng.paretovariate(0.9)), len(vocab) - 1)] for _ in range(k)), None)
    return list(entries)


def captions(n: int, words: int, vocab: list[str], rng: random.Random) -> list[str]:
    # Zipf-like ranks: frequent words (and so frequent entries) dominate, as in real captions.
    cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(vocab))))
    out = []
    for _ in range(n):
        toks = rng.choices(vocab, cum_weights=cum, k=rng.randint(words // 2, words * 3 // 2))
        text = " ".join(toks).capitalize() + rng.choice([".", "!", ", and more."])
        out.append(text)
    return out


def write_llava_jsonl(path: Path, caps: list[str]) -> None:
    with open(path, "w") as f:
        for i, c in enumerate(caps):
            conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": c}]
            f.write(json.dumps({"id": str(i), "image": f"{i}.jpg", "conversations": conv}) + "\n")


def rate(fn, items, seconds: float) -> tuple[float, float, int, list]:
    """Items per CPU second and per wall second of fn over items, stopping after ``seconds`` of CPU.

    CPU time of this (single-threaded) process is the "one core" figure: on a shared machine it
    does not count the time other processes hold the core; wall time is given beside it."""
    results, c0, w0 = [], time.process_time(), time.perf_counter()
    for item in items:
        results.append(fn(item))
        if time.process_time() - c0 > seconds:
            break
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return len(results) / cpu, len(results) / wall, len(results), results


def naive_matcher(entries: list[str]):
    """One compiled regex per entry, searched in every caption: whole-token matches on the same normal form."""
    pats = [
        (i, re.compile("(?<= )" + re.escape(k.strip()) + "(?= )"))
        for i, e in enumerate(entries)
        if (k := entry_key(e)) is not None
    ]

    def match(text: str) -> list[int]:
        s = spaced(text)
        return [i for i, p in pats if p.search(s)]

    return match


def device() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_used": 1,
        "cores_on_machine": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.machine(),
        "python": platform.python_version(),
        "pyahocorasick": version("pyahocorasick"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", default="10000,100000,500000", help="metadata sizes (comma-separated)")
    ap.add_argument(
        "--words", default="12,80", help="mean caption lengths in words: short (BLIP-style), long (detailed)"
    )
    ap.add_argument("--captions", type=int, default=20_000, help="captions per configuration")
    ap.add_argument("--seconds", type=float, default=4.0, help="time box per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="passes of our matcher and of the command; best kept")
    ap.add_argument("--out", default="runs/bench/curate_match.json")
    args = ap.parse_args()
    rng = random.Random(0)
    vocab = vocabulary(200_000, rng)
    rows = []
    for n_entries in (int(x) for x in args.entries.split(",")):
        entries = metadata(n_entries, vocab, rng)
        t0 = time.perf_counter()
        matcher = Matcher(entries)
        build = time.perf_counter() - t0
        naive = naive_matcher(entries)
        for words in (int(x) for x in args.words.split(",")):
            caps = captions(args.captions, words, vocab, random.Random(words))
            # best of --repeat passes over all captions: the least disturbed by other processes
            runs = [rate(matcher.match, caps, 1e9) for _ in range(args.repeat)]
            ours, ours_wall = max(r[0] for r in runs), max(r[1] for r in runs)
            _, _, n_ours, found = runs[0]
            slow, _, n_slow, found_naive = rate(naive, caps, args.seconds)
            if found_naive != found[:n_slow]:
                raise SystemExit("naive and Aho-Corasick matchers disagree: a bug")
            with tempfile.TemporaryDirectory() as tmp:
                pool, md = Path(tmp) / "pool.jsonl", Path(tmp) / "md.json"
                md.write_text(json.dumps(entries))
                write_llava_jsonl(pool, caps)
                c0 = time.process_time()
                Matcher(load_entries(md))
                setup = time.process_time() - c0  # the command builds its own automaton: not per caption
                e2e = 0.0
                for _ in range(args.repeat):
                    c0 = time.process_time()
                    count_entries([pool], md, Path(tmp) / "counts.json", MatchOptions(), quiet=True)
                    e2e = max(e2e, len(caps) / (time.process_time() - c0 - setup))
            rows.append(
                {
                    "entries": n_entries,
                    "caption_words": words,
                    "captions": n_ours,
                    "matches_per_caption": round(sum(map(len, found)) / n_ours, 1),
                    "ours_captions_per_s": round(ours),
                    "ours_captions_per_wall_s": round(ours_wall),
                    "naive_captions_per_s": round(slow, 2),
                    "naive_sample": n_slow,
                    "speedup": round(ours / slow),
                    "end_to_end_captions_per_s": round(e2e),
                    "automaton_build_s": round(build, 2),
                }
            )
            r = rows[-1]
            print(
                f"{r['entries']:>8} entries {r['caption_words']:>3} words: ours {r['ours_captions_per_s']:>8}/s "
                f"naive {r['naive_captions_per_s']:>9}/s x{r['speedup']}",
                file=sys.stderr,
            )
    print(
        f"\n{'entries':>8} {'words':>5} {'matches':>7} {'ours/s':>9} {'(wall)':>9} {'naive/s':>9} {'speedup':>8} "
        f"{'match cmd/s':>11} {'build s':>7}"
    )
    for r in rows:
        print(
            f"{r['entries']:>8} {r['caption_words']:>5} {r['matches_per_caption']:>7} {r['ours_captions_per_s']:>9} "
            f"{r['ours_captions_per_wall_s']:>9} {r['naive_captions_per_s']:>9} {r['speedup']:>8} "
            f"{r['end_to_end_captions_per_s']:>11} {r['automaton_build_s']:>7}"
        )
    result = {
        "benchmark": "curate_match",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device(),
        "note": "captions per CPU second of one single-threaded process, best of the repeats (wall-clock "
        "rate beside it); "
        "naive = one compiled regex per entry per caption; match cmd = count_entries over LLaVA JSONL",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
