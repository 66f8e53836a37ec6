"""Metadata-balanced curation of image-text pools, MetaCLIP style.

Three steps, each a sub-command of ``llavakit curate`` and a plain function here:

1. ``metadata``: build the entry list (word lists such as WordNet synsets, corpus unigrams with a
   count threshold, corpus bigrams with a PMI threshold, popular titles), deduplicated, under a budget.
2. ``match``: find which entries each caption contains (Aho-Corasick over normalized token text) and
   count, per entry, the pairs that contain it.
3. ``balance``: keep each pair with a probability that caps every entry near ``threshold`` pairs,
   deterministically from (seed, pair content, entry), writing the subset and a report.

``match`` and ``balance`` stream over their inputs in chunks and resume after a crash.
"""

from llavakit.curate.balance import BalanceOptions, balance_files, keep_pair, keep_probabilities, uniform
from llavakit.curate.errors import CurationError
from llavakit.curate.match import MatchOptions, count_entries, load_counts, merge_counts
from llavakit.curate.matcher import Matcher
from llavakit.curate.metadata import MetadataOptions, build_metadata, load_entries, write_metadata
from llavakit.curate.ngrams import NgramCounts, count_corpus, pmi

__all__ = [
    "BalanceOptions",
    "CurationError",
    "MatchOptions",
    "Matcher",
    "MetadataOptions",
    "NgramCounts",
    "balance_files",
    "build_metadata",
    "count_corpus",
    "count_entries",
    "keep_pair",
    "keep_probabilities",
    "load_counts",
    "load_entries",
    "merge_counts",
    "pmi",
    "uniform",
    "write_metadata",
]
