"""Tokens and normal forms shared by the metadata builder and the matcher.

A token is a maximal run of word characters (Python's ``\\w``: letters, digits, underscore, in any
script) or a single character that is neither a word character nor white space (punctuation,
symbols). "ice-cream's" is ``ice - cream ' s``. Matching "on word boundaries" means: an entry
matches a caption when the entry's token sequence occurs contiguously in the caption's token
sequence. Writing both as single-space-joined tokens padded with one space on each side turns that
into plain substring search (the trick MetaCLIP uses), so an Aho-Corasick automaton reports only
whole-token matches and no per-hit boundary check is needed.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w")
_SYMBOL = re.compile(r"[^\w\s]")


def tokenize(text: str, case_sensitive: bool = False) -> list[str]:
    """Split ``text`` into tokens, lower-cased unless ``case_sensitive``."""
    return _TOKEN.findall(text if case_sensitive else text.lower())


def is_word(token: str) -> bool:
    """True for a word token, False for a punctuation or symbol token."""
    return _WORD.match(token) is not None


def spaced(text: str, case_sensitive: bool = False) -> str:
    """The normal form searched by the matcher: ``" tok1 tok2 ... "``, the tokens of ``tokenize``.

    Built by spacing out symbols and re-joining on white space, about twice as fast as joining
    ``tokenize``'s list (``str.split`` and ``\\s`` agree on what white space is)."""
    if not case_sensitive:
        text = text.lower()
    return " " + " ".join(_SYMBOL.sub(r" \g<0> ", text).split()) + " "


def entry_key(entry: str, case_sensitive: bool = False) -> str | None:
    """The normal form of an entry, or None when it has no word token (never a useful concept)."""
    toks = tokenize(entry, case_sensitive)
    if not any(is_word(t) for t in toks):
        return None
    return " " + " ".join(toks) + " "


def clean_entry(raw: str) -> str:
    """Collapse internal white space; entries are stored one per JSON string, never with tabs/newlines."""
    return " ".join(raw.split())
