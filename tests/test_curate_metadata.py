"""`llavakit curate metadata`: thresholds, PMI by hand, dedup, budget, per-source counts, errors."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from llavakit.cli import main
from llavakit.curate import pmi
from llavakit.curate.metadata import MetadataOptions, build_metadata


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def curate(*args, check: bool = True) -> Result:
    """The real CLI entry point, in this process (one `llavakit` start costs seconds of torch imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["curate", *map(str, args)])
        except SystemExit as e:
            code = int(e.code or 0)
    res = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{res.stdout}\n{res.stderr}")
    return res


def curate_subprocess(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llavakit", "curate", *map(str, args)], capture_output=True, text=True)


# Word tokens per line: 4 + 4 + 4 + 4 = N = 16. The comma in the last line stops the bigram "is big".
CORPUS = "New York is big\nnew york is old\nThe cat is big\nthe dog is, big\n"
# Unigrams: new 2, york 2, is 4, big 3, old 1, the 2, cat 1, dog 1.
# PMI = log2(c12 * N / (c1 * c2)):
HAND_PMI = {
    "new york": 3.0,  # log2(2*16 / (2*2)) = log2(8)
    "york is": 2.0,  # log2(2*16 / (2*4)) = log2(4)
    "is big": 1.4150374992788437,  # log2(2*16 / (4*3)) = log2(8/3); c(is big) = 2, not 3
    "is old": 2.0,  # log2(1*16 / (4*1))
    "the cat": 3.0,  # log2(1*16 / (2*1))
    "cat is": 2.0,  # log2(1*16 / (1*4))
    "the dog": 3.0,
    "dog is": 2.0,
}


def test_pmi_formula_matches_hand_values():
    assert pmi(2, 2, 2, 16) == 3.0
    assert pmi(2, 4, 3, 16) == pytest.approx(1.4150374992788437, abs=1e-12)
    # Wikipedia scale: a pair of words seen only together, each 3 times in 4e9 tokens -> about 30.3 bits.
    assert pmi(3, 3, 3, 4_000_000_000) == pytest.approx(30.31, abs=0.01)


def test_bigram_pmi_threshold_from_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "md.json"
    for threshold, expected in [
        (3.0, {"new york", "the cat", "the dog"}),
        (2.0, {k for k, v in HAND_PMI.items() if v >= 2.0}),
        (1.41, set(HAND_PMI)),
    ]:
        proc = curate("metadata", "--corpus", corpus, "--order", "bigram", "--bigram-min-pmi", threshold, "-o", out)
        md = json.loads(out.read_text())
        assert set(md["entries"]) == expected, threshold
        assert md["corpus_tokens"] == 16
        assert md["stats"]["bigram"] == {
            "provided": True,
            "candidates": 8,
            "passed": len(expected),
            "added": len(expected),
            "duplicates": 0,
            "invalid": 0,
            "over_budget": 0,
        }
        assert "no bigram can reach PMI" not in proc.stderr
        # strongest first: the three 3-bit bigrams lead, ties broken by text
        assert md["entries"][:3] == ["new york", "the cat", "the dog"]
    # bigram min count 2 leaves the pairs seen twice
    curate(
        "metadata", "--corpus", corpus, "--order", "bigram", "--bigram-min-pmi", 1.4, "--bigram-min-count", 2, "-o", out
    )
    assert set(json.loads(out.read_text())["entries"]) == {"new york", "york is", "is big"}


def test_default_pmi_threshold_warns_on_a_small_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    proc = curate("metadata", "--corpus", corpus, "--order", "bigram", "-o", tmp_path / "md.json")
    assert "no bigram can reach PMI 30" in proc.stderr and "log2 N = 4.0" in proc.stderr
    assert json.loads((tmp_path / "md.json").read_text())["entries"] == []


def test_precomputed_counts_give_the_same_bigrams(tmp_path):
    uni = tmp_path / "uni.tsv"
    uni.write_text("new\t2\nyork\t2\nis\t4\nbig\t3\nold\t1\nthe\t2\ncat\t1\ndog\t1\n")
    bi = tmp_path / "bi.tsv"
    bi.write_text(
        "new york\t2\nyork is\t2\nis big\t2\nis old\t1\nthe cat\t1\ncat is\t1\nthe dog\t1\ndog is\t1\nnew zealand\t5\n"
    )  # 'zealand' has no unigram count: skipped, as MetaCLIP does
    out = tmp_path / "md.json"
    curate(
        "metadata",
        "--unigram-counts",
        uni,
        "--bigram-counts",
        bi,
        "--order",
        "bigram",
        "--bigram-min-pmi",
        2.0,
        "-o",
        out,
    )
    assert set(json.loads(out.read_text())["entries"]) == {k for k, v in HAND_PMI.items() if v >= 2.0}


def test_unigram_count_threshold_is_at_least(tmp_path):
    corpus = tmp_path / "corpus.txt.gz"
    import gzip

    with gzip.open(corpus, "wt") as f:
        f.write("alpha beta gamma\n" * 99)
        f.write("alpha delta\n")  # alpha 100, beta 99, gamma 99, delta 1
    out = tmp_path / "md.json"
    curate("metadata", "--corpus", corpus, "--order", "unigram", "-o", out)
    md = json.loads(out.read_text())
    assert md["entries"] == ["alpha"]
    assert md["stats"]["unigram"]["candidates"] == 4 and md["stats"]["unigram"]["passed"] == 1
    curate("metadata", "--corpus", corpus, "--order", "unigram", "--unigram-min-count", 99, "-o", out)
    assert json.loads(out.read_text())["entries"] == ["alpha", "beta", "gamma"]  # count desc, then text


def test_titles_words_dedup_budget_and_per_source_counts(tmp_path):
    words = tmp_path / "synsets.txt"
    words.write_text("# WordNet synset names\ndog.n.01\nhot_dog.n.01\napple.n.01\nApple\n---\ncat\n")
    titles = tmp_path / "titles.tsv"
    titles.write_text(
        "Apple_Inc.\t500\nThe_Beatles\t90\nHot_dog\t80\nCategory:Dogs\t1000\nStar Wars: Episode IV\t75\n"
        "Rare_page\t69\nSplit_page\t40\nSplit_page\t30\n"
    )
    out = tmp_path / "md.json"
    curate("metadata", "--words", words, "--titles", titles, "-o", out)
    md = json.loads(out.read_text())
    assert md["entries"] == [
        "dog",
        "hot dog",
        "apple",
        "cat",  # 'Apple' is a duplicate of 'apple', '---' invalid
        "Apple Inc.",
        "The Beatles",
        "Star Wars: Episode IV",
        "Split page",
    ]
    assert md["sources"] == ["words"] * 4 + ["title"] * 4
    assert md["stats"]["words"] == {
        "provided": True,
        "candidates": 6,
        "passed": 6,
        "added": 4,
        "duplicates": 1,
        "invalid": 1,
        "over_budget": 0,
    }
    # Hot dog (80) is a duplicate of "hot dog"; Category: is a namespace; Rare_page 69 < 70; Split_page 40+30 = 70.
    assert md["stats"]["title"] == {
        "provided": True,
        "candidates": 7,
        "passed": 5,
        "added": 4,
        "duplicates": 1,
        "invalid": 0,
        "over_budget": 0,
    }
    assert md["stats"]["unigram"]["provided"] is False
    # Budget 6 cuts the titles strongest-first: Apple Inc. (500), The Beatles (90), then full.
    curate("metadata", "--words", words, "--titles", titles, "--budget", 6, "-o", out)
    md = json.loads(out.read_text())
    assert md["total"] == 6 and md["entries"][-2:] == ["Apple Inc.", "The Beatles"]
    assert md["stats"]["title"]["over_budget"] == 3  # Hot dog was examined (duplicate) before the cut
    # Order decides who gets a concept: titles first -> "Hot dog" from titles, "hot dog" a word duplicate.
    curate("metadata", "--words", words, "--titles", titles, "--order", "title,words", "-o", out)
    md = json.loads(out.read_text())
    assert md["entries"][:5] == ["Apple Inc.", "The Beatles", "Hot dog", "Star Wars: Episode IV", "Split page"]
    assert "hot dog" not in md["entries"]
    # Case-sensitive: 'Apple' and 'apple' are two entries.
    curate("metadata", "--words", words, "--case-sensitive", "-o", out)
    assert json.loads(out.read_text())["entries"] == ["dog", "hot dog", "apple", "Apple", "cat"]


def test_all_sources_together_in_python(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS * 25)  # counts x25: only "is" (100) reaches 100; PMI unchanged
    (tmp_path / "w.txt").write_text("Is\nzebra\n")
    (tmp_path / "t.tsv").write_text("New York\t100\n")
    opts = MetadataOptions(bigram_min_pmi=3.0)
    md = build_metadata(
        opts, words=[tmp_path / "w.txt"], corpus=[tmp_path / "c.txt"], titles=[tmp_path / "t.tsv"], quiet=True
    )
    assert md.entries == ["Is", "zebra", "new york", "the cat", "the dog"]  # unigram "is" is a duplicate
    assert md.sources == ["words", "words", "bigram", "bigram", "bigram"]
    assert md.stats["unigram"].duplicates == 1 and md.stats["title"].duplicates == 1


def test_bad_input_names_file_and_line(tmp_path):
    titles = tmp_path / "titles.tsv"
    titles.write_text("Good\t100\nBad line without count\n")
    proc = curate_subprocess("metadata", "--titles", titles, "-o", tmp_path / "md.json")  # the installed command
    assert proc.returncode == 2
    assert f"{titles}:2:" in proc.stderr
    proc = curate("metadata", "--titles", tmp_path / "missing.tsv", "-o", tmp_path / "md.json", check=False)
    assert proc.returncode == 2 and "missing.tsv: file not found" in proc.stderr
    proc = curate("metadata", "--titles", titles, "--order", "words,bogus", "-o", tmp_path / "md.json", check=False)
    assert proc.returncode == 2 and "bogus" in proc.stderr
