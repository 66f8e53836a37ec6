"""`llavakit curate match`: the matcher against brute force, the streaming readers, counts, resume."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re

import pytest

from llavakit.cli import main
from llavakit.curate import CurationError, Matcher
from llavakit.curate.records import caption_text, iter_records
from llavakit.curate.text import spaced, tokenize
from curate_crash import KILLED, killed_before_checkpoint


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


# ---- brute force, written independently of llavakit.curate.text ---------------------------------


def bf_tokens(text: str) -> list[str]:
    """Word runs (alphanumeric or '_') and single other non-space characters, lower-cased."""
    toks, cur = [], []
    for ch in text.lower():
        if ch.isalnum() or ch == "_":
            cur.append(ch)
            continue
        if cur:
            toks.append("".join(cur))
            cur = []
        if not ch.isspace():
            toks.append(ch)
    if cur:
        toks.append("".join(cur))
    return toks


def bf_match(entries: list[str], caption: str) -> list[int]:
    ct = bf_tokens(caption)
    found = []
    for i, entry in enumerate(entries):
        et = bf_tokens(entry)
        if not any(t[0].isalnum() or t[0] == "_" for t in et):
            continue  # no word character: never an entry
        n = len(et)
        if any(ct[j : j + n] == et for j in range(len(ct) - n + 1)):
            found.append(i)
    return found


WORDS = [
    "new",
    "york",
    "city",
    "cat",
    "dog",
    "hot",
    "c",
    "at",
    "t",
    "rock",
    "roll",
    "café",
    "straße",
    "猫",
    "x1",
    "a",
    "the",
    "_id",
    "42",
    "catdog",
]
PUNCT = ["&", "+", "-", "'", ".", ":", ",", "!"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", ", ", "-", "'s ", "", " & ", "+", ". ", "\u00a0", "\u3000", "\x1c"]


def random_entries(rng: random.Random, n: int) -> list[str]:
    entries = []
    for _ in range(n):
        k = rng.choice([1, 1, 2, 2, 3])
        toks = [rng.choice(WORDS) if rng.random() < 0.85 else rng.choice(PUNCT) for _ in range(k)]
        text = rng.choice([" ", "", " "]).join(toks)
        entries.append(text.upper() if rng.random() < 0.1 else text)
    return entries + ["--", "&", "New York", "new york"]  # invalid ones and a duplicate normal form


def random_caption(rng: random.Random) -> str:
    parts = [rng.choice(WORDS) for _ in range(rng.randint(0, 25))]
    text = "".join(p + rng.choice(SEPARATORS) for p in parts)
    return "".join(ch.upper() if rng.random() < 0.1 else ch for ch in text)


def test_matcher_equals_brute_force_on_random_captions():
    rng = random.Random(1234)
    entries = random_entries(rng, 300)
    matcher = Matcher(entries)
    assert matcher.unmatchable == sum(
        1 for e in entries if not any(t[0].isalnum() or t[0] == "_" for t in bf_tokens(e))
    )
    total = 0
    for _ in range(600):
        caption = random_caption(rng)
        expected = bf_match(entries, caption)
        assert matcher.match(caption) == expected, caption
        total += len(expected)
    assert total > 1000  # the captions really exercise the matcher


def test_spaced_form_has_the_tokens_of_the_tokenizer():
    rng = random.Random(11)
    alphabet = "aZ9_é猫ß-'.,&+ \t\n\u00a0\u2003\u3000\x1c\x0b\u200b\u0301😀"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert tokenize(text) == bf_tokens(text), repr(text)
        assert spaced(text) == " " + " ".join(tokenize(text)) + " ", repr(text)


def test_matcher_equals_per_entry_regex_for_plain_word_entries():
    """For entries of words and single spaces, token matching is the familiar word-boundary regex."""
    rng = random.Random(7)
    entries = sorted({" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2]))) for _ in range(120)})
    patterns = [re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, e.split())) + r"(?!\w)") for e in entries]
    matcher = Matcher(entries)
    for _ in range(400):
        caption = random_caption(rng)
        expected = [i for i, p in enumerate(patterns) if p.search(caption.lower())]
        assert matcher.match(caption) == expected, caption


def test_matcher_cases():
    entries = ["new york", "york city", "new", "city", "cat", "C++", "Apple", "apple", "rock & roll"]
    m = Matcher(entries)
    assert m.match("A trip to New York City.") == [0, 1, 2, 3]  # overlapping matches all count
    assert m.match("catdog and cats") == []  # no match inside a word
    assert m.match("the cat's toy; c ++ code") == [4, 5]
    assert m.match("APPLE pie, rock&roll") == [6, 7, 8]  # both spellings of one normal form count
    cs = Matcher(entries, case_sensitive=True)
    assert cs.match("APPLE and Apple, New york") == [6]
    assert Matcher([]).match("anything") == []


def test_json_array_reader_streams_and_resumes(tmp_path):
    rng = random.Random(0)
    records = [
        {
            "id": f"r{i}",
            "image": f"{i}.jpg",
            "caption": "".join(rng.choice('abc éß猫,"\\\n') for _ in range(rng.randint(0, 900))),
            "n": [i, {"x": 1.5}],
        }
        for i in range(3000)
    ]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    assert path.stat().st_size > 2_500_000  # several 1 MiB read windows
    got = list(iter_records(path))
    assert [r.value for r in got] == records
    for k in (0, 1, 1234, 2999):  # resume after record k
        rest = list(iter_records(path, got[k].end, got[k].next_line))
        assert [r.value for r in rest] == records[k + 1 :]
    text = path.read_text(encoding="utf-8")
    assert [r.line for r in got] == [n for n, line in enumerate(text.split("\n"), 1) if line == "  {"]


def test_readers_report_file_and_line(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"caption": "a"}\n\n{"caption": "b"\n')
    with pytest.raises(CurationError, match=r"bad.jsonl:3: not valid JSON"):
        list(iter_records(jsonl))
    arr = tmp_path / "bad.json"
    arr.write_text('[\n  {"caption": "a"},\n  {"caption": "b"}\n  {"caption": "c"}\n]\n')
    with pytest.raises(CurationError, match=r"bad.json:4: expected ',' or ']'"):
        list(iter_records(arr))
    arr.write_text('[\n  {"caption": "a"},\n  {"caption": "b",\n  "x": }\n]\n')
    with pytest.raises(CurationError, match=r"bad.json:4: not valid JSON"):
        list(iter_records(arr))
    arr.write_text('[{"caption": "a"}, 3]')
    with pytest.raises(CurationError, match=r"bad.json:1: expected a JSON object"):
        list(iter_records(arr))
    arr.write_text('[{"caption": "a"}')
    with pytest.raises(CurationError, match="not closed"):
        list(iter_records(arr))
    arr.write_bytes(b'[{"caption": "a"},\n {"caption": "\xff"}]')
    with pytest.raises(CurationError, match=r"bad.json:2: not UTF-8"):
        list(iter_records(arr))
    jsonl.write_bytes(b'{"caption": "a"}\n{"caption": "\xff"}\n')
    with pytest.raises(CurationError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_records(jsonl))
    nocap = tmp_path / "nocap.jsonl"
    nocap.write_text('{"caption": "a dog"}\n{"image": "x.jpg", "label": "dog"}\n')
    (tmp_path / "e.txt").write_text("dog\n")
    code, _, err = curate("match", nocap, "--metadata", tmp_path / "e.txt", "-o", tmp_path / "c.json", check=False)
    assert code == 2 and "nocap.jsonl:2: record has no 'conversations'" in err


def llava(i: int, caption: str) -> dict:
    return {
        "id": str(i),
        "image": f"img/{i}.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe the dog picture briefly."},
            {"from": "gpt", "value": caption},
        ],
    }


def test_match_counts_llava_json_jsonl_and_plain_captions(tmp_path):
    rng = random.Random(3)
    entries = ["dog", "cat", "red car", "new york", "picture", "image"]
    (tmp_path / "md.txt").write_text("\n".join(entries) + "\n")
    captions = [random_caption(rng) + rng.choice([" a dog", " red car", " New York", ""]) for _ in range(500)]
    recs = [llava(i, c) for i, c in enumerate(captions)]
    (tmp_path / "pool.json").write_text(json.dumps(recs, indent=1))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "plain.jsonl").write_text(
        "".join(json.dumps({"image": f"{i}.jpg", "caption": c}) + "\n" for i, c in enumerate(captions))
    )
    expected = [0] * len(entries)
    for c in captions:
        for i in bf_match(entries, c):
            expected[i] += 1
    for name in ("pool.json", "pool.jsonl", "plain.jsonl"):
        curate(
            "match",
            tmp_path / name,
            "--metadata",
            tmp_path / "md.txt",
            "-o",
            tmp_path / "counts.json",
            "--chunk-size",
            64,
            "--quiet",
        )
        doc = json.loads((tmp_path / "counts.json").read_text())
        assert doc["counts"] == expected, name
        assert doc["pairs"] == 500 and doc["pairs_matched"] == sum(1 for c in captions if bf_match(entries, c))
        assert not (tmp_path / "counts.json.state.npz").exists()
    # --text all also matches the human turn ("the dog picture"): every pair has 'dog' and 'picture'
    curate(
        "match",
        tmp_path / "pool.jsonl",
        "--metadata",
        tmp_path / "md.txt",
        "-o",
        tmp_path / "all.json",
        "--text",
        "all",
    )
    doc = json.loads((tmp_path / "all.json").read_text())
    assert doc["counts"][0] == doc["counts"][4] == 500 and doc["counts"][5] == expected[5]  # '<image>' is no text
    # two files count as one pool
    curate(
        "match",
        tmp_path / "pool.json",
        tmp_path / "plain.jsonl",
        "--metadata",
        tmp_path / "md.txt",
        "-o",
        tmp_path / "two.json",
    )
    assert json.loads((tmp_path / "two.json").read_text())["counts"] == [2 * c for c in expected]


def test_caption_text_of_llava_records():
    rec = {
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A dog."},
            {"from": "human", "value": "Color?"},
            {"from": "gpt", "value": "Brown."},
        ]
    }
    assert caption_text(rec).split() == ["A", "dog.", "Brown."]
    assert "What is this?" in caption_text(rec, "all") and "<image>" not in caption_text(rec, "all")
    assert caption_text({"image": "x", "text": "a cat"}) == "a cat"
    assert caption_text({"image": "x", "caption": ["a cat", "a kitten"]}) == "a cat a kitten"
    assert caption_text({"image": "x"}) is None


def test_match_resumes_after_a_crash_without_double_counting(tmp_path):
    rng = random.Random(5)
    (tmp_path / "md.txt").write_text("\n".join(WORDS) + "\nnew york\nhot dog\n")
    (tmp_path / "pool.jsonl").write_text(
        "".join(json.dumps({"caption": random_caption(rng)}) + "\n" for _ in range(3000))
    )
    args = [
        "match",
        tmp_path / "pool.jsonl",
        "--metadata",
        tmp_path / "md.txt",
        "--chunk-size",
        200,
        "--checkpoint-seconds",
        0,
        "--quiet",
    ]
    curate(*args, "-o", tmp_path / "whole.json")
    crashed = killed_before_checkpoint(6, *args, "-o", tmp_path / "resumed.json")
    assert crashed.returncode == KILLED, crashed.stderr
    assert (tmp_path / "resumed.json.state.npz").exists() and not (tmp_path / "resumed.json").exists()
    curate(*args, "-o", tmp_path / "resumed.json")  # picks up the checkpoint of chunk 5
    whole, resumed = (json.loads((tmp_path / n).read_text()) for n in ("whole.json", "resumed.json"))
    for key in ("counts", "pairs", "pairs_matched", "matches"):
        assert whole[key] == resumed[key], key
    assert not (tmp_path / "resumed.json.state.npz").exists()
    # a checkpoint from other inputs is refused, not silently reused
    crashed = killed_before_checkpoint(2, *args, "-o", tmp_path / "again.json")
    assert crashed.returncode == KILLED, crashed.stderr
    with open(tmp_path / "pool.jsonl", "a") as f:
        f.write(json.dumps({"caption": "one more dog"}) + "\n")
    code, _, err = curate(*args, "-o", tmp_path / "again.json", check=False)
    assert code == 2 and "--restart" in err
    curate(*args, "-o", tmp_path / "again.json", "--restart")
    assert json.loads((tmp_path / "again.json").read_text())["pairs"] == 3001
