"""``curate match``: count, for every metadata entry, the pairs whose caption contains it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llavakit.curate.errors import CurationError
from llavakit.curate.files import atomic_write_json
from llavakit.curate.matcher import Matcher
from llavakit.curate.metadata import entries_fingerprint, load_entries
from llavakit.curate.records import Record, caption_text
from llavakit.curate.stream import PassOptions, Position, State, inputs_fingerprint, load_state, run_pass

FORMAT = "llavakit-curate-counts"


@dataclass(frozen=True)
class MatchOptions:
    text: str = "gpt"  # LLaVA records: "gpt" (assistant turns) or "all" turns
    caption_key: str = "caption"  # other records: this key, else "text"
    case_sensitive: bool = False
    chunk_size: int = 10_000  # records per chunk (does not change results)
    checkpoint_seconds: float = 30.0  # 0: checkpoint after every chunk (does not change results)

    def __post_init__(self) -> None:
        if self.text not in ("gpt", "all"):
            raise CurationError(f"text must be 'gpt' or 'all', got {self.text!r}")
        if self.chunk_size < 1:
            raise CurationError(f"chunk size must be at least 1, got {self.chunk_size}")

    def pass_options(self, desc: str, quiet: bool) -> PassOptions:
        return PassOptions(self.chunk_size, self.checkpoint_seconds, desc, quiet)

    def matching(self) -> dict:
        """The options that decide which entries a pair matches (stored with the counts)."""
        return {"text": self.text, "caption_key": self.caption_key, "case_sensitive": self.case_sensitive}


def chunk_matches(chunk: list[Record], path: str | Path, matcher: Matcher, options: MatchOptions) -> list[list[int]]:
    """Matched entry ids of every record of a chunk."""
    out = []
    for rec in chunk:
        text = caption_text(rec.value, options.text, options.caption_key)
        if text is None:
            raise CurationError(
                f"{path}:{rec.line}: record has no 'conversations' and no "
                f"{options.caption_key!r} or 'text' string (see --caption-key)"
            )
        out.append(matcher.match(text))
    return out


def state_path(out: str | Path) -> Path:
    return Path(str(out) + ".state.npz")


def count_entries(
    inputs: list[str | Path],
    metadata: str | Path,
    out: str | Path,
    options: MatchOptions = MatchOptions(),
    restart: bool = False,
    quiet: bool = False,
) -> dict:
    """Stream the inputs, count pairs per entry, write the counts JSON atomically; returns it."""
    entries = load_entries(metadata)
    matcher = Matcher(entries, options.case_sensitive)
    identity = {
        "kind": "match",
        "inputs": inputs_fingerprint(inputs),
        "metadata_sha256": entries_fingerprint(entries),
        "match_options": options.matching(),
    }
    spath = state_path(out)
    state = None if restart else load_state(spath, identity)
    if state is None:
        state = State(
            Position(),
            {"pairs": 0, "pairs_matched": 0, "matches": 0, "seconds": 0.0},
            {"counts": np.zeros(len(entries), dtype=np.int64)},
        )
    counts, meta = state.arrays["counts"], state.meta

    def process(chunk: list[Record], path: str | Path) -> None:
        matched = chunk_matches(chunk, path, matcher, options)
        flat = [i for ids in matched for i in ids]
        counts[:] += np.bincount(np.asarray(flat, dtype=np.int64), minlength=len(entries))
        meta["pairs"] += len(chunk)
        meta["pairs_matched"] += sum(1 for ids in matched if ids)
        meta["matches"] += len(flat)

    run_pass(inputs, identity, state, spath, process, options.pass_options("match", quiet))
    doc = {
        "format": FORMAT,
        "version": 1,
        "metadata": str(metadata),
        "metadata_sha256": identity["metadata_sha256"],
        "match_options": options.matching(),
        "inputs": [f["path"] for f in identity["inputs"]],
        "pairs": meta["pairs"],
        "pairs_matched": meta["pairs_matched"],
        "matches": meta["matches"],
        "entries": len(entries),
        "unmatchable_entries": matcher.unmatchable,
        "seconds": round(meta["seconds"], 3),
        "counts": counts.tolist(),
    }
    atomic_write_json(out, doc, indent=None)
    spath.unlink(missing_ok=True)
    return doc


def load_counts(path: str | Path, entries: list[str]) -> tuple[np.ndarray, dict]:
    """Per-entry counts from ``curate match``, checked against the metadata they must belong to."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: counts file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CurationError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CurationError(f"{path}: not a counts file written by 'llavakit curate match'")
    if doc["metadata_sha256"] != entries_fingerprint(entries) or len(doc["counts"]) != len(entries):
        raise CurationError(
            f"{path}: counted with other metadata ({doc.get('metadata')}); "
            "run 'llavakit curate match' again with this metadata"
        )
    return np.asarray(doc["counts"], dtype=np.int64), doc


def merge_counts(paths: list[str | Path], out: str | Path) -> dict:
    """Sum the counts files of shards of one pool (same metadata and match options) into one."""
    docs = []
    for p in paths:
        doc = json.loads(Path(p).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CurationError(f"{p}: not a counts file written by 'llavakit curate match'")
        if docs and (doc["metadata_sha256"], doc["match_options"]) != (
            docs[0]["metadata_sha256"],
            docs[0]["match_options"],
        ):
            raise CurationError(f"{p}: other metadata or match options than {paths[0]}")
        docs.append(doc)
    if not docs:
        raise CurationError("no counts files to merge")
    merged = {**docs[0], "inputs": [i for d in docs for i in d["inputs"]]}
    for key in ("pairs", "pairs_matched", "matches", "seconds"):
        merged[key] = sum(d[key] for d in docs)
    merged["counts"] = np.sum([d["counts"] for d in docs], axis=0, dtype=np.int64).tolist()
    atomic_write_json(out, merged, indent=None)
    return merged
