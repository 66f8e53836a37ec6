"""`llavakit curate balance`: flattening on a long-tailed pool, determinism, LLaVA output, resume."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llavakit.cli import main
from llavakit.curate import merge_counts, uniform
from curate_crash import KILLED, killed_before_checkpoint

T = 20


def curate(*args, check: bool = True) -> tuple[int, str, str]:
    """The real CLI entry point, in this process (one `llavakit` start costs seconds of torch imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["curate", *map(str, args)])
        except SystemExit as e:
            code = int(e.code or 0)
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{out.getvalue()}\n{err.getvalue()}")
    return code, out.getvalue(), err.getvalue()


def curate_subprocess(*args, env: dict | None = None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "llavakit", "curate", *map(str, args)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def llava(i: int, caption: str) -> dict:
    return {
        "id": f"{i:06d}",
        "image": f"images/{i:06d}.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWrite a short caption."},
            {"from": "gpt", "value": caption},
        ],
    }


def concept(i: int) -> str:
    return f"concept{i:03d}"


def zipf_counts(n: int = 300, head: int = 1500, alpha: float = 1.1) -> list[int]:
    return [max(1, int(head / (k + 1) ** alpha)) for k in range(n)]


def write_pool(tmp_path, multi: bool = False, unmatched: int = 0, seed: int = 0):
    """A synthetic long-tailed pool: concept k appears in zipf_counts()[k] captions (single-concept
    captions), or each caption carries 1-3 Zipf-drawn concepts (``multi``). Writes md.txt, pool.jsonl."""
    rng = random.Random(seed)
    counts = zipf_counts()
    if multi:
        weights = [c / sum(counts) for c in counts]
        groups = [
            sorted(set(rng.choices(range(len(counts)), weights, k=rng.randint(1, 3)))) for _ in range(sum(counts))
        ]
    else:
        groups = [[k] for k, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(groups)
    captions = [f"A photo of {' and '.join(concept(k) for k in g)} on a table." for g in groups]
    captions += [f"An empty room, take {j}." for j in range(unmatched)]
    rng.shuffle(captions)
    (tmp_path / "md.txt").write_text("".join(concept(k) + "\n" for k in range(len(counts))))
    recs = [llava(i, c) for i, c in enumerate(captions)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def match(tmp_path, pool="pool.jsonl"):
    curate("match", tmp_path / pool, "--metadata", tmp_path / "md.txt", "-o", tmp_path / "counts.json", "--quiet")
    return np.array(json.loads((tmp_path / "counts.json").read_text())["counts"])


def balance(tmp_path, out: str, *extra, pools=("pool.jsonl",)):
    curate(
        "balance",
        *(tmp_path / p for p in pools),
        "--metadata",
        tmp_path / "md.txt",
        "--counts",
        tmp_path / "counts.json",
        "-t",
        T,
        "-o",
        tmp_path / out,
        "--quiet",
        *extra,
    )
    stem = out.rsplit(".", 1)[0]
    report = json.loads((tmp_path / f"{stem}.report" / "report.json").read_text())
    with np.load(tmp_path / f"{stem}.report" / "per_entry.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return report, arrays


def test_balancing_caps_single_concept_entries_at_t(tmp_path):
    write_pool(tmp_path)
    counts = match(tmp_path)
    assert counts.tolist() == zipf_counts()
    report, a = balance(tmp_path, "bal.jsonl")
    # In expectation each entry ends at min(count, T): exactly, since each pair has one entry.
    np.testing.assert_allclose(a["expected_after"], np.minimum(counts, T), rtol=0, atol=1e-9)
    assert a["expected_after"].max() <= T + 1e-9
    # Observed: binomial(c, T/c) around T, so within a few standard deviations; the tail is untouched.
    assert (a["after"] <= T + 5 * math.sqrt(T)).all()
    rare = counts <= T
    assert (a["after"][rare] == counts[rare]).all()
    assert report["entries_over_threshold_before"] == int((counts > T).sum()) > 40
    assert report["max_before"] == 1500 and report["max_after"] <= T + 5 * math.sqrt(T)
    assert report["pairs_kept"] == a["after"].sum() == sum(1 for _ in open(tmp_path / "bal.jsonl"))
    assert abs(report["pairs_kept"] - np.minimum(counts, T).sum()) < 5 * math.sqrt(np.minimum(counts, T).sum())
    # Averaged over seeds, frequent entries sit at T.
    afters = [a["after"]]
    for seed in (1, 2):
        afters.append(balance(tmp_path, f"bal{seed}.jsonl", "--seed", seed)[1]["after"])
    mean = np.mean(afters, axis=0)
    head = counts > T
    assert abs(mean[head].mean() - T) < 1.5
    assert (mean[head] <= T + 4 * math.sqrt(T / len(afters))).all()
    # The report names head and tail, and draws the histograms.
    assert report["head"][0]["entry"] == "concept000" and report["head"][0]["before"] == 1500
    assert report["tail"][0]["before"] == counts.min() and len(report["tail"]) == 20
    png = tmp_path / "bal.report" / "entry_hist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "concept000" in (tmp_path / "bal.report" / "report.md").read_text()


def test_balancing_flattens_a_multi_concept_pool(tmp_path):
    recs = write_pool(tmp_path, multi=True, seed=1)
    counts = match(tmp_path)
    report, a = balance(tmp_path, "bal.jsonl")
    # The tool's expectation, recomputed here pair by pair: P(kept) = 1 - prod(1 - min(1, T/c)).
    p = np.minimum(1.0, T / np.maximum(counts, 1))
    expected = np.zeros(len(counts))
    for r in recs:
        ids = [int(w[7:10]) for w in r["conversations"][1]["value"].split() if w.startswith("concept")]
        expected[ids] += 1 - np.prod(1 - p[ids])
    np.testing.assert_allclose(a["expected_after"], expected, atol=1e-4)
    assert (np.abs(a["after"] - expected) <= 5 * np.sqrt(expected) + 1).all()
    # Flatter: the 10 most frequent entries hold a smaller share of all matches, the entropy of the
    # entry distribution rises, the largest entry shrinks most.
    share = lambda x: np.sort(x)[::-1][:10].sum() / x.sum()  # noqa: E731
    entropy = lambda x: -(x[x > 0] / x.sum() * np.log(x[x > 0] / x.sum())).sum()  # noqa: E731
    assert share(a["before"]) > 0.5 and share(a["after"]) < 0.75 * share(a["before"])
    assert entropy(a["after"]) > entropy(a["before"]) + 0.5
    assert a["after"].max() < 0.4 * a["before"].max()
    # But head entries keep more than T: pairs they share with rarer entries survive through those
    # (MetaCLIP's "any entry keeps it" rule). The report's expected_after shows by how much.
    assert a["expected_after"].max() > 10 * T


def test_same_seed_same_output_other_seed_other_output(tmp_path):
    write_pool(tmp_path)
    match(tmp_path)
    r1, _ = balance(tmp_path, "a.jsonl")
    r2, _ = balance(tmp_path, "b.jsonl")
    r3, _ = balance(tmp_path, "c.jsonl", "--seed", 7)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    assert a == b and a != c
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "sources")}  # noqa: E731
    assert strip(r1) == strip(r2)
    assert (tmp_path / "a.report" / "entry_hist.png").read_bytes() == (
        tmp_path / "b.report" / "entry_hist.png"
    ).read_bytes()


def check_llava_jsonl(path) -> list[dict]:
    """What stage-1 training reads: one LLaVA sample per line, one <image> per image."""
    out = []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        rec = json.loads(line)
        assert isinstance(rec["image"], str) and isinstance(rec["id"], str), n
        turns = rec["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"], n
        assert turns[0]["value"].count("<image>") == 1, n
        out.append(rec)
    return out


def test_output_is_the_same_llava_records_for_json_and_jsonl_input(tmp_path):
    recs = write_pool(tmp_path, multi=True, seed=2)
    (tmp_path / "pool.json").write_text(json.dumps(recs, indent=2))
    match(tmp_path)
    balance(tmp_path, "from_jsonl.jsonl")
    balance(tmp_path, "from_json.jsonl", pools=("pool.json",))
    in_lines = (tmp_path / "pool.jsonl").read_bytes().splitlines(keepends=True)
    out_lines = (tmp_path / "from_jsonl.jsonl").read_bytes().splitlines(keepends=True)
    # JSONL in: the kept lines are the input lines, byte for byte, in input order.
    it = iter(in_lines)
    assert all(any(line == x for x in it) for line in out_lines)
    kept = check_llava_jsonl(tmp_path / "from_jsonl.jsonl")
    # JSON array in: the same records (equal as JSON), same decisions: the pair identity is its content.
    assert check_llava_jsonl(tmp_path / "from_json.jsonl") == kept
    ids = {r["id"] for r in kept}
    assert [r for r in recs if r["id"] in ids] == kept


def test_sharded_run_makes_the_same_decisions(tmp_path):
    write_pool(tmp_path, multi=True, seed=3)
    match(tmp_path)
    lines = (tmp_path / "pool.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "shard0.jsonl").write_bytes(b"".join(lines[: len(lines) // 3]))
    (tmp_path / "shard1.jsonl").write_bytes(b"".join(lines[len(lines) // 3 :]))
    _, whole = balance(tmp_path, "whole.jsonl")
    _, a0 = balance(tmp_path, "part0.jsonl", pools=("shard0.jsonl",))
    _, a1 = balance(tmp_path, "part1.jsonl", pools=("shard1.jsonl",))
    assert (tmp_path / "part0.jsonl").read_bytes() + (tmp_path / "part1.jsonl").read_bytes() == (
        tmp_path / "whole.jsonl"
    ).read_bytes()
    assert (a0["after"] + a1["after"] == whole["after"]).all()
    _, both = balance(tmp_path, "two_files.jsonl", pools=("shard0.jsonl", "shard1.jsonl"))
    assert (tmp_path / "two_files.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    # Shards counted apart and summed give the counts of the whole pool.
    for i in (0, 1):
        curate("match", tmp_path / f"shard{i}.jsonl", "--metadata", tmp_path / "md.txt", "-o", tmp_path / f"c{i}.json")
    merged = merge_counts([tmp_path / "c0.json", tmp_path / "c1.json"], tmp_path / "merged.json")
    whole_counts = json.loads((tmp_path / "counts.json").read_text())
    assert merged["counts"] == whole_counts["counts"] and merged["pairs"] == whole_counts["pairs"]


def test_unmatched_pairs_are_dropped_unless_asked(tmp_path):
    write_pool(tmp_path, unmatched=25)
    match(tmp_path)
    r, _ = balance(tmp_path, "drop.jsonl")
    r_keep, _ = balance(tmp_path, "keep.jsonl", "--keep-unmatched")
    assert r["pairs"] - r["pairs_matched"] == 25
    assert r_keep["pairs_kept"] == r["pairs_kept"] + 25
    assert "empty room" not in (tmp_path / "drop.jsonl").read_text()


def test_counts_from_other_metadata_are_refused(tmp_path):
    write_pool(tmp_path)
    match(tmp_path)
    (tmp_path / "md.txt").write_text("dog\ncat\n")
    code, _, err = curate(
        "balance",
        tmp_path / "pool.jsonl",
        "--metadata",
        tmp_path / "md.txt",
        "--counts",
        tmp_path / "counts.json",
        "-t",
        T,
        "-o",
        tmp_path / "x.jsonl",
        check=False,
    )
    assert code == 2 and "counted with other metadata" in err


def test_uniform_draws_are_fixed_and_uniform():
    pair = bytes(range(16))
    assert uniform(0, pair, "dog") == uniform(0, pair, "dog")
    assert len({uniform(s, pair, e) for s in range(10) for e in ("dog", "cat")}) == 20
    u = np.array([uniform(0, i.to_bytes(16, "big"), "dog") for i in range(20_000)])
    assert 0 <= u.min() and u.max() < 1
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    assert (np.abs(hist - 2000) < 5 * math.sqrt(2000)).all()


def _same_run(tmp_path, a: str, b: str) -> None:
    assert (tmp_path / f"{a}.jsonl").read_bytes() == (tmp_path / f"{b}.jsonl").read_bytes()
    ra, rb = (json.loads((tmp_path / f"{n}.report" / "report.json").read_text()) for n in (a, b))
    for key in ("pairs", "pairs_matched", "pairs_kept", "head", "tail", "max_after", "matches_after"):
        assert ra[key] == rb[key], key
    with (
        np.load(tmp_path / f"{a}.report" / "per_entry.npz") as za,
        np.load(tmp_path / f"{b}.report" / "per_entry.npz") as zb,
    ):
        for k in ("before", "after", "expected_after"):
            np.testing.assert_array_equal(za[k], zb[k])


def test_resume_after_a_crash_at_the_worst_moment(tmp_path):
    write_pool(tmp_path, multi=True, seed=4)
    match(tmp_path)
    args = [
        "balance",
        tmp_path / "pool.jsonl",
        "--metadata",
        tmp_path / "md.txt",
        "--counts",
        tmp_path / "counts.json",
        "-t",
        T,
        "--chunk-size",
        500,
        "--checkpoint-seconds",
        0,
        "--quiet",
    ]
    curate(*args, "-o", tmp_path / "whole.jsonl")
    # Dies after chunk 7's records were appended to the output (and synced), before its checkpoint.
    crashed = killed_before_checkpoint(7, *args, "-o", tmp_path / "resumed.jsonl")
    assert crashed.returncode == KILLED, crashed.stderr
    partial = tmp_path / "resumed.jsonl.partial"
    assert partial.exists() and not (tmp_path / "resumed.jsonl").exists()
    # The partial output holds more than the checkpoint (chunk 6) counts: those lines must not be duplicated.
    with np.load(tmp_path / "resumed.jsonl.state.npz") as z:
        checkpoint = json.loads(str(z["__state__"]))
    assert checkpoint["position"]["records"] == 6 * 500
    assert 0 < checkpoint["meta"]["out_bytes"] < partial.stat().st_size
    curate(*args, "-o", tmp_path / "resumed.jsonl")
    _same_run(tmp_path, "whole", "resumed")
    assert not partial.exists() and not (tmp_path / "resumed.jsonl.state.npz").exists()


def test_resume_after_sigkill(tmp_path):
    write_pool(tmp_path, multi=True, seed=5)
    lines = (tmp_path / "pool.jsonl").read_bytes()
    (tmp_path / "pool.jsonl").write_bytes(lines * 2)  # long enough to be killed halfway
    match(tmp_path)
    args = [
        "balance",
        tmp_path / "pool.jsonl",
        "--metadata",
        tmp_path / "md.txt",
        "--counts",
        tmp_path / "counts.json",
        "-t",
        T,
        "--chunk-size",
        100,
        "--checkpoint-seconds",
        0,
        "--quiet",
    ]
    curate(*args, "-o", tmp_path / "whole.jsonl")
    state = tmp_path / "killed.jsonl.state.npz"
    proc = curate_subprocess(*args, "-o", tmp_path / "killed.jsonl")
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # well into the run, mid-chunk most likely
    proc.send_signal(signal.SIGKILL)
    rc = proc.wait(timeout=60)
    if rc != -signal.SIGKILL:
        pytest.fail(f"the run ended before it could be killed (exit {rc}); make the pool longer")
    assert state.exists()
    curate(*args, "-o", tmp_path / "killed.jsonl")
    _same_run(tmp_path, "whole", "killed")
