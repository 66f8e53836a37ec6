"""A cheap lower bound on how many tokens a text has, from its size in bytes, for one tokenizer.

A prompt of 30 MB must be refused before it is tokenized: tokenizing it costs a minute and gigabytes.
Every token of a byte-level or byte-fallback BPE tokenizer stands for at most ``B`` bytes of the
text it was read from, ``B`` being its longest vocabulary entry in bytes; a text of ``n`` bytes has
at least ``n / B`` tokens. Normalizers may shrink text before the model reads it: Unicode
composition and lower-casing by at most three times in UTF-8 bytes (three conjoining jamo make one
Hangul syllable; the Kelvin sign lower-cases to "k"), a string replacement by the ratio of its
lengths. Where a piece of the tokenizer could drop text or fold a run of unknown characters into one
token (whitespace splitting, stripping, a WordPiece or Unigram model), no bound is claimed.
"""

from __future__ import annotations

import json
import math
from typing import Any

SHRINKING = {"NFC": 3.0, "NFKC": 3.0, "Lowercase": 3.0}  # at most this many input bytes per output byte
KEEPING = {"NFD", "NFKD", "Prepend"}  # never shorten the text
DROPPING_PRE_TOKENIZERS = {"Whitespace", "WhitespaceSplit", "BertPreTokenizer", "CharDelimiterSplit"}


def _normalizer_shrink(spec: dict[str, Any] | None) -> float | None:
    if spec is None:
        return 1.0
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1.0
        for child in spec.get("normalizers", []):
            child_factor = _normalizer_shrink(child)
            if child_factor is None:
                return None
            factor *= child_factor
        return factor
    if kind in SHRINKING:
        return SHRINKING[kind]
    if kind in KEEPING:
        return 1.0
    if kind == "Replace" and "String" in spec.get("pattern", {}) and spec.get("content"):
        pattern, content = spec["pattern"]["String"].encode(), spec["content"].encode()
        return max(1.0, len(pattern) / len(content))
    return None


def _pre_tokenizer_keeps_text(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_keeps_text(child) for child in spec.get("pretokenizers", []))
    if kind == "Split":
        return spec.get("behavior") != "Removed"
    return kind not in DROPPING_PRE_TOKENIZERS


def bytes_per_token(tokenizer: Any) -> float | None:
    """The most bytes of input text one token can stand for, or None where no sound bound is known."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None
    if model.get("unk_token") and model.get("fuse_unk") and not model.get("byte_fallback"):
        return None  # a run of unknown characters can become one token
    shrink = _normalizer_shrink(spec.get("normalizer"))
    if shrink is None or not _pre_tokenizer_keeps_text(spec.get("pre_tokenizer")):
        return None
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    # Byte-level vocabularies spell each byte as one character; others spell text in UTF-8.
    longest = max(len(token) if byte_level else len(token.encode("utf-8")) for token in tokenizer.get_vocab())
    return float(max(longest, 4)) * shrink  # an unknown character (at most 4 bytes) is one token


def min_tokens(text_bytes: int, per_token: float | None) -> int:
    """At least this many tokens for ``text_bytes`` bytes of text (0 where no bound is known)."""
    return 0 if per_token is None else math.ceil(text_bytes / per_token)
