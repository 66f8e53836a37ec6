"""``llavakit curate metadata|match|balance``: argparse front end over the curation functions."""

from __future__ import annotations

import argparse
import sys

from llavakit.curate.errors import CurationError
from llavakit.curate.metadata import SOURCES, MetadataOptions


def _metadata_args(p: argparse.ArgumentParser) -> None:
    d = MetadataOptions()
    p.add_argument("-o", "--output", required=True, help="metadata JSON to write")
    p.add_argument(
        "--words",
        action="append",
        default=[],
        metavar="FILE",
        help="word list, one entry per line (WordNet synset names like 'hot_dog.n.01' become 'hot dog'); repeatable",
    )
    p.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="FILE",
        help="plain text, one document per line (.gz ok): unigram counts and bigram PMI; repeatable",
    )
    p.add_argument(
        "--unigram-counts", metavar="FILE", help="precomputed 'word<TAB>count' lines (added to --corpus counts)"
    )
    p.add_argument("--bigram-counts", metavar="FILE", help="precomputed 'word1 word2<TAB>count' lines")
    p.add_argument(
        "--titles",
        action="append",
        default=[],
        metavar="FILE",
        help="'title<TAB>views' lines, e.g. summed Wikipedia pageviews; repeatable",
    )
    p.add_argument(
        "--unigram-min-count",
        type=int,
        default=d.unigram_min_count,
        help="keep unigrams seen at least this often (%(default)s)",
    )
    p.add_argument(
        "--bigram-min-pmi",
        type=float,
        default=d.bigram_min_pmi,
        help="keep bigrams with PMI (log2, see docs/curation.md) at least this (%(default)s)",
    )
    p.add_argument(
        "--bigram-min-count", type=int, default=d.bigram_min_count, help="and seen at least this often (%(default)s)"
    )
    p.add_argument(
        "--title-min-views",
        type=int,
        default=d.title_min_views,
        help="keep titles with at least this many views (%(default)s)",
    )
    p.add_argument("--budget", type=int, default=d.budget, help="at most this many entries in total (%(default)s)")
    p.add_argument("--order", default=",".join(SOURCES), help="order in which sources fill the budget (%(default)s)")
    p.add_argument("--case-sensitive", action="store_true", help="count and deduplicate case-sensitively")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="LLaVA JSON/JSONL or image-caption JSONL files")
    p.add_argument("--metadata", required=True, help="entries: 'curate metadata' output, a JSON list or a .txt")
    p.add_argument("--chunk-size", type=int, default=10_000, help="records per chunk (%(default)s)")
    p.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=30.0,
        help="write a resume checkpoint at most this often; 0 after every chunk (%(default)s)",
    )
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by a killed run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="curate_command", metavar="STEP", required=True)
    _metadata_args(sub.add_parser("metadata", help="build the entry list from word lists, a corpus and titles"))
    m = sub.add_parser("match", help="count the pairs that contain each entry")
    _stream_args(m)
    m.add_argument("-o", "--output", required=True, help="counts JSON to write")
    m.add_argument(
        "--text",
        choices=("gpt", "all"),
        default="gpt",
        help="LLaVA records: match the assistant turns (gpt) or all turns (%(default)s)",
    )
    m.add_argument("--caption-key", default="caption", help="other records: caption field, else 'text' (%(default)s)")
    m.add_argument("--case-sensitive", action="store_true", help="match case-sensitively")
    b = sub.add_parser("balance", help="down-sample pairs of frequent entries, write the subset and a report")
    _stream_args(b)
    b.add_argument("--counts", required=True, help="counts JSON from 'curate match' (same metadata)")
    b.add_argument(
        "--threshold",
        "-t",
        type=int,
        required=True,
        help="T: an entry seen c > T times keeps a pair with probability T/c",
    )
    b.add_argument("--seed", type=int, default=0, help="sampling seed (%(default)s)")
    b.add_argument("-o", "--output", required=True, help="balanced records, JSONL")
    b.add_argument("--report-dir", help="report folder (default: OUTPUT without suffix + '.report')")
    b.add_argument("--keep-unmatched", action="store_true", help="keep pairs that match no entry (dropped by default)")
    b.add_argument("--head", type=int, default=20, help="entries in the report's head and tail tables (%(default)s)")


def _run_metadata(args) -> int:
    from llavakit.curate.metadata import build_metadata, write_metadata

    options = MetadataOptions(
        unigram_min_count=args.unigram_min_count,
        bigram_min_pmi=args.bigram_min_pmi,
        bigram_min_count=args.bigram_min_count,
        title_min_views=args.title_min_views,
        budget=args.budget,
        order=tuple(s.strip() for s in args.order.split(",") if s.strip()),
        case_sensitive=args.case_sensitive,
    )
    md = build_metadata(
        options,
        words=args.words,
        corpus=args.corpus,
        unigram_counts=args.unigram_counts,
        bigram_counts=args.bigram_counts,
        titles=args.titles,
        quiet=args.quiet,
    )
    write_metadata(args.output, md)
    print(f"{'source':<8} {'read':>10} {'passed':>10} {'added':>10} {'dup':>8} {'invalid':>8} {'over':>8}")
    for name, st in md.stats.items():
        if st.provided:
            print(
                f"{name:<8} {st.candidates:>10} {st.passed:>10} {st.added:>10} {st.duplicates:>8} "
                f"{st.invalid:>8} {st.over_budget:>8}"
            )
    print(f"{len(md.entries)} entries (budget {options.budget}) -> {args.output}")
    for note in md.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _run_match(args) -> int:
    from llavakit.curate.match import MatchOptions, count_entries

    options = MatchOptions(
        text=args.text,
        caption_key=args.caption_key,
        case_sensitive=args.case_sensitive,
        chunk_size=args.chunk_size,
        checkpoint_seconds=args.checkpoint_seconds,
    )
    doc = count_entries(args.inputs, args.metadata, args.output, options, restart=args.restart, quiet=args.quiet)
    rate = f"{doc['pairs'] / doc['seconds']:.0f} pairs/s" if doc["seconds"] > 0 else "no time"
    seen = sum(1 for c in doc["counts"] if c)
    print(
        f"{doc['pairs']} pairs, {doc['pairs_matched']} with an entry, {doc['matches']} matches, "
        f"{seen} of {doc['entries']} entries seen ({rate}) -> {args.output}"
    )
    return 0


def _run_balance(args) -> int:
    from llavakit.curate.balance import BalanceOptions, balance_files

    options = BalanceOptions(
        threshold=args.threshold,
        seed=args.seed,
        keep_unmatched=args.keep_unmatched,
        chunk_size=args.chunk_size,
        checkpoint_seconds=args.checkpoint_seconds,
        head=args.head,
    )
    r = balance_files(
        args.inputs,
        args.metadata,
        args.counts,
        args.output,
        options,
        report_dir=args.report_dir,
        restart=args.restart,
        quiet=args.quiet,
    )
    print(
        f"kept {r['pairs_kept']} of {r['pairs']} pairs ({100 * r['kept_fraction']:.2f}%); entries above T="
        f"{r['threshold']}: {r['entries_over_threshold_before']} before, {r['entries_over_threshold_after']} after "
        f"-> {args.output}"
    )
    return 0


def run(args) -> int:
    handlers = {"metadata": _run_metadata, "match": _run_match, "balance": _run_balance}
    try:
        return handlers[args.curate_command](args)
    except CurationError as e:
        print(f"llavakit curate {args.curate_command}: error: {e}", file=sys.stderr)
        return 2
