"""Unigram and bigram counts from a text corpus, and bigram pointwise mutual information.

PMI follows MetaCLIP's metadata builder, which scores bigrams with NLTK's
``BigramAssocMeasures.pmi`` over a ``BigramCollocationFinder(word_fd, bigram_fd)``:

    PMI(w1, w2) = log2( p(w1 w2) / (p(w1) p(w2)) ) = log2( c(w1 w2) * N / (c(w1) * c(w2)) )

with maximum-likelihood estimates p(w) = c(w) / N and p(w1 w2) = c(w1 w2) / N over the same N,
the total number of word tokens (the sum of all unigram counts). The log is base 2 (bits).

Why the threshold 30 makes sense only in this form: since c(w1 w2) <= min(c(w1), c(w2)),
PMI <= log2(N / max(c(w1), c(w2))) <= log2(N). A bigram can reach 30 bits only on a corpus of at
least 2**30 (about 1.07e9) tokens, which English Wikipedia (a few billion words) is; there the
threshold keeps pairs whose words occur almost only together ("named entities", about 100K of them).
In natural log, 30 would need N >= e**30 (about 1e13) tokens and select nothing. On a smaller corpus
lower the threshold (the builder warns when it is above log2 N).

Counting: a bigram is two consecutive word tokens of the same line with no punctuation token
between them (MetaCLIP resets the previous token at punctuation); lines are documents.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from llavakit.curate.errors import CurationError
from llavakit.curate.files import open_text
from llavakit.curate.text import is_word, tokenize


@dataclass
class NgramCounts:
    unigrams: Counter = field(default_factory=Counter)  # word -> count
    bigrams: Counter = field(default_factory=Counter)  # (w1, w2) -> count

    @property
    def total(self) -> int:
        """N, the number of word tokens: the denominator of every probability in the PMI."""
        return sum(self.unigrams.values())

    def update(self, other: "NgramCounts") -> None:
        self.unigrams.update(other.unigrams)
        self.bigrams.update(other.bigrams)


def pmi(c12: int, c1: int, c2: int, n: int) -> float:
    """log2(c12 * n / (c1 * c2)); summed as logs so huge counts never overflow a float."""
    return math.log2(c12) + math.log2(n) - math.log2(c1) - math.log2(c2)


def count_line(line: str, counts: NgramCounts, case_sensitive: bool = False) -> None:
    prev: str | None = None
    for tok in tokenize(line, case_sensitive):
        if not is_word(tok):
            prev = None  # no bigram across punctuation
            continue
        counts.unigrams[tok] += 1
        if prev is not None:
            counts.bigrams[(prev, tok)] += 1
        prev = tok


def count_corpus(paths: list[str | Path], case_sensitive: bool = False, quiet: bool = False) -> NgramCounts:
    """Count unigrams and bigrams over text files (one document per line, ``.gz`` allowed).

    Memory grows with the number of distinct bigrams, not with the corpus: fine for corpora of a few
    GB; for Wikipedia-scale counts, count elsewhere and pass the count files instead.
    """
    counts = NgramCounts()
    for path in paths:
        if not Path(path).is_file():
            raise CurationError(f"{path}: corpus file not found")
        size = os.path.getsize(path)
        with (
            open_text(path) as f,
            tqdm(
                total=size, unit="B", unit_scale=True, desc=f"count {Path(path).name}", disable=True if quiet else None
            ) as bar,
        ):
            for line in f:
                count_line(line, counts, case_sensitive)
                bar.update(len(line))  # characters, close enough to bytes for a progress bar
    return counts


def parse_count_line(path: str | Path, lineno: int, line: str) -> tuple[str, int]:
    text, sep, count = line.rstrip("\r\n").rpartition("\t")
    if not sep or not text.strip():
        raise CurationError(f"{path}:{lineno}: expected 'TEXT<TAB>COUNT', got {line.strip()[:80]!r}")
    try:
        value = int(count)
    except ValueError:
        raise CurationError(f"{path}:{lineno}: count {count!r} is not an integer") from None
    if value < 0:
        raise CurationError(f"{path}:{lineno}: count {value} is negative")
    return text.strip(), value


def read_unigram_counts(path: str | Path, case_sensitive: bool = False) -> Counter:
    """``word<TAB>count`` per line (``.gz`` allowed); repeated words are summed."""
    counts: Counter = Counter()
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            word, value = parse_count_line(path, lineno, line)
            counts[word if case_sensitive else word.lower()] += value
    return counts


def read_bigram_counts(path: str | Path, case_sensitive: bool = False) -> Counter:
    """``word1 word2<TAB>count`` per line (``.gz`` allowed); repeated bigrams are summed."""
    counts: Counter = Counter()
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            text, value = parse_count_line(path, lineno, line)
            words = text.split()
            if len(words) != 2:
                raise CurationError(f"{path}:{lineno}: a bigram is two words separated by a space, got {text!r}")
            if not case_sensitive:
                words = [w.lower() for w in words]
            counts[(words[0], words[1])] += value
    return counts
