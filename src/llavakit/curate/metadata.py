"""Build the metadata entry list: word lists, corpus unigrams and bigrams, popular titles.

Sources are added in ``options.order`` (default: words, unigram, bigram, title, as in MetaCLIP's
table: WordNet synsets, Wiki unigrams, Wiki bigrams, Wiki titles). Within a source, candidates come
strongest first (highest count, PMI or views; ties by text), so when the budget fills up inside a
source the cut acts like a higher threshold for that source, which is how MetaCLIP sized its title
list to reach 500K. Entries are deduplicated on their normal form (``text.entry_key``): the first
source to bring a concept gets it. Entries without any word character are dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llavakit.curate.errors import CurationError
from llavakit.curate.files import atomic_write_json, open_text
from llavakit.curate.ngrams import (
    NgramCounts,
    count_corpus,
    parse_count_line,
    pmi,
    read_bigram_counts,
    read_unigram_counts,
)
from llavakit.curate.text import clean_entry, entry_key

SOURCES = ("words", "unigram", "bigram", "title")
FORMAT = "llavakit-curate-metadata"

_SYNSET = re.compile(r"^(?P<name>.+)\.[nvasr]\.\d+$")  # "hot_dog.n.01"
# Wikipedia namespaces: such pages are not concepts. (MetaCLIP dropped every title with a colon,
# which also loses real titles such as "Star Wars: Episode IV".)
_NAMESPACES = frozenset(
    "media special talk user wikipedia file mediawiki template help category portal draft module "
    "timedtext book education program gadget topic image wp wt project".split()
)


@dataclass(frozen=True)
class MetadataOptions:
    unigram_min_count: int = 100  # "follow CLIP"
    bigram_min_pmi: float = 30.0  # bits, see ngrams.py; about 100K bigrams on English Wikipedia
    bigram_min_count: int = 1  # MetaCLIP applies none; raise it to drop one-off pairs on small corpora
    title_min_views: int = 70  # MetaCLIP: summed views over 25 sampled days of pageviews
    budget: int = 500_000
    order: tuple[str, ...] = SOURCES
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.order if s not in SOURCES]
        if unknown or len(set(self.order)) != len(self.order):
            raise CurationError(f"order {','.join(self.order)!r}: use each of {', '.join(SOURCES)} at most once")
        if self.budget < 1:
            raise CurationError(f"budget must be at least 1, got {self.budget}")
        if self.unigram_min_count < 1 or self.bigram_min_count < 1:
            raise CurationError("count thresholds must be at least 1")


@dataclass
class SourceStats:
    """Per-source counts. passed = added + duplicates + invalid + over_budget."""

    provided: bool = False
    candidates: int = 0  # distinct items read from the source
    passed: int = 0  # at or above the source's threshold
    added: int = 0  # new entries in the list
    duplicates: int = 0  # same normal form as an entry already in the list
    invalid: int = 0  # no word character
    over_budget: int = 0  # passed but not examined: the budget was full


@dataclass
class Metadata:
    entries: list[str]
    sources: list[str]  # source name of each entry
    stats: dict[str, SourceStats]
    options: MetadataOptions
    corpus_tokens: int | None = None
    notes: list[str] = field(default_factory=list)


def synset_to_entry(line: str) -> str:
    """ "hot_dog.n.01" -> "hot dog" (as MetaCLIP turns synset names into entries); other lines as they are."""
    m = _SYNSET.match(line)
    return m.group("name").replace("_", " ") if m else line


def word_list_candidates(paths: list[str | Path]) -> tuple[list[str], int]:
    """Lines of word lists in file order ('#' starts a comment line); WordNet synset names converted."""
    seen: dict[str, None] = {}
    for path in paths:
        with open_text(path) as f:
            for line in f:
                text = clean_entry(line)
                if text and not text.startswith("#"):
                    seen.setdefault(synset_to_entry(text), None)
    return list(seen), len(seen)


def unigram_candidates(unigrams: Counter, min_count: int) -> list[str]:
    kept = [(c, w) for w, c in unigrams.items() if c >= min_count]
    return [w for c, w in sorted(kept, key=lambda cw: (-cw[0], cw[1]))]


def bigram_candidates(counts: NgramCounts, min_pmi: float, min_count: int) -> tuple[list[str], int]:
    """Bigrams with PMI >= min_pmi (see ngrams.pmi), strongest first; also returns how many were scored."""
    n = counts.total
    uni = counts.unigrams
    scored = []
    for (w1, w2), c12 in counts.bigrams.items():
        if c12 < min_count or uni.get(w1, 0) <= 0 or uni.get(w2, 0) <= 0:
            continue  # MetaCLIP also skips bigrams whose words have no unigram count
        score = pmi(c12, uni[w1], uni[w2], n)
        if score >= min_pmi:
            scored.append((score, f"{w1} {w2}"))
    scored.sort(key=lambda sw: (-sw[0], sw[1]))
    return [w for _, w in scored], len(counts.bigrams)


def is_namespace_title(title: str) -> bool:
    prefix, sep, _ = title.partition(":")
    prefix = prefix.strip().lower()
    return bool(sep) and (prefix in _NAMESPACES or prefix.endswith(" talk"))


def title_candidates(paths: list[str | Path], min_views: int) -> tuple[list[str], int]:
    """``title<TAB>views`` per line; underscores become spaces, repeated titles sum their views."""
    views: Counter = Counter()
    for path in paths:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    title, count = parse_count_line(path, lineno, line)
                    views[clean_entry(title.replace("_", " "))] += count
    kept = [(c, t) for t, c in views.items() if c >= min_views and not is_namespace_title(t)]
    return [t for _, t in sorted(kept, key=lambda ct: (-ct[0], ct[1]))], len(views)


def assemble(
    candidates: dict[str, list[str]], budget: int, case_sensitive: bool, stats: dict[str, SourceStats]
) -> tuple[list[str], list[str]]:
    """Append sources in dict order, deduplicating on the normal form, until ``budget`` entries."""
    keys: set[str] = set()
    entries: list[str] = []
    sources: list[str] = []
    for name, items in candidates.items():
        st = stats[name]
        for i, text in enumerate(items):
            if len(entries) >= budget:
                st.over_budget = len(items) - i
                break
            key = entry_key(text, case_sensitive)
            if key is None:
                st.invalid += 1
            elif key in keys:
                st.duplicates += 1
            else:
                keys.add(key)
                entries.append(text)
                sources.append(name)
                st.added += 1
    return entries, sources


def build_metadata(
    options: MetadataOptions,
    words: list[str | Path] = (),
    corpus: list[str | Path] = (),
    unigram_counts: str | Path | None = None,
    bigram_counts: str | Path | None = None,
    titles: list[str | Path] = (),
    quiet: bool = False,
) -> Metadata:
    """Read every source the user gave, apply the thresholds, and assemble the list."""
    stats = {name: SourceStats() for name in options.order}
    given = {
        "words": bool(words),
        "unigram": bool(corpus or unigram_counts),
        "bigram": bool(corpus or bigram_counts),
        "title": bool(titles),
    }
    # Corpus and unigram counts feed both unigram entries and bigram PMI, so either source may be left
    # out of the order; a file that no ordered source uses is a mistake worth stopping for.
    explicit = {"words": words, "bigram": bigram_counts, "title": titles}
    missing = [name for name, value in explicit.items() if value and name not in options.order]
    if (corpus or unigram_counts) and not {"unigram", "bigram"} & set(options.order):
        missing.append("unigram/bigram (corpus or counts)")
    if missing:
        raise CurationError(f"source(s) {', '.join(missing)} given but not in --order {','.join(options.order)}")
    if not any(given.values()):
        raise CurationError("no source given: pass --words, --corpus, --unigram-counts/--bigram-counts or --titles")
    for path in [*words, *corpus, *titles, *(p for p in (unigram_counts, bigram_counts) if p)]:
        if not Path(path).is_file():
            raise CurationError(f"{path}: file not found")

    notes: list[str] = []
    counts = NgramCounts()
    if corpus:
        counts.update(count_corpus(list(corpus), options.case_sensitive, quiet))
    if unigram_counts:
        counts.unigrams.update(read_unigram_counts(unigram_counts, options.case_sensitive))
    if bigram_counts:
        if not counts.unigrams:
            raise CurationError(f"{bigram_counts}: bigram PMI needs unigram counts too (--unigram-counts or --corpus)")
        counts.bigrams.update(read_bigram_counts(bigram_counts, options.case_sensitive))
    n_tokens = counts.total if counts.unigrams else None
    if given["bigram"] and n_tokens and math.log2(n_tokens) < options.bigram_min_pmi:
        notes.append(
            f"corpus has {n_tokens} tokens: no bigram can reach PMI {options.bigram_min_pmi:g} "
            f"(the maximum is log2 N = {math.log2(n_tokens):.1f}); lower --bigram-min-pmi"
        )

    candidates: dict[str, list[str]] = {}
    for name in options.order:
        if not given[name]:
            continue
        st = stats[name]
        st.provided = True
        if name == "words":
            items, st.candidates = word_list_candidates(list(words))
        elif name == "unigram":
            items, st.candidates = unigram_candidates(counts.unigrams, options.unigram_min_count), len(counts.unigrams)
        elif name == "bigram":
            items, st.candidates = bigram_candidates(counts, options.bigram_min_pmi, options.bigram_min_count)
        else:
            items, st.candidates = title_candidates(list(titles), options.title_min_views)
        st.passed = len(items)
        candidates[name] = items
    entries, sources = assemble(candidates, options.budget, options.case_sensitive, stats)
    return Metadata(entries, sources, stats, options, n_tokens, notes)


def entries_fingerprint(entries: list[str]) -> str:
    """sha256 of the entry list: ties a counts file to the metadata it was counted with."""
    h = hashlib.sha256()
    for e in entries:
        h.update(e.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def write_metadata(path: str | Path, md: Metadata) -> None:
    atomic_write_json(
        path,
        {
            "format": FORMAT,
            "version": 1,
            "options": {**asdict(md.options), "order": list(md.options.order)},
            "corpus_tokens": md.corpus_tokens,
            "total": len(md.entries),
            "stats": {name: asdict(st) for name, st in md.stats.items()},
            "notes": md.notes,
            "sha256": entries_fingerprint(md.entries),
            "entries": md.entries,
            "sources": md.sources,
        },
        indent=None,
    )


def load_entries(path: str | Path) -> list[str]:
    """Entries from our metadata file, a plain JSON list of strings (MetaCLIP's metadata.json),
    or a text file with one entry per line."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: metadata file not found")
    if path.suffix in (".txt", ".gz"):
        with open_text(path) as f:
            return [e for e in (clean_entry(line) for line in f) if e]
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise CurationError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    entries = obj.get("entries") if isinstance(obj, dict) else obj
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise CurationError(f"{path}: expected a list of strings or an object with an 'entries' list")
    return [clean_entry(e) for e in entries]
