"""Multiple-choice answers: which option letter a free-form reply names (ScienceQA-IMG, AI2D, MMBench,
MMMU, BLINK), and ScienceQA-IMG's own scorers."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

DEFAULT_NUM_CHOICES = 8  # letters A..H when neither choices nor a count is given
SCIENCEQA_MODES = ("lmms_eval", "llava")

_WRAPPING = " \t\n\r\"'`*_"  # quotes and markdown emphasis around a reply
_STATEMENT = r"(?:answer|option|choice)s?(?:\s+is)?\s*[:\-]?\s*\(?([{letters}])\)?(?![A-Za-z])"


def choice_letters(choices: Sequence[str] | None = None, num_choices: int | None = None) -> str:
    """The valid option letters: one per choice, else `num_choices`, else A..H."""
    n = len(choices) if choices else (num_choices or DEFAULT_NUM_CHOICES)
    if not 1 <= n <= 26:
        raise ValueError(f"multiple choice needs 1..26 options, got {n}")
    return string.ascii_uppercase[:n]


def _normalize_option(text: str) -> str:
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def _letter_from_option_text(reply: str, choices: Sequence[str], letters: str) -> str | None:
    """The option whose text the reply is (after lower-casing and dropping punctuation), else the
    only option whose text occurs in the reply as whole words."""
    norm_reply = _normalize_option(reply)
    options = [_normalize_option(c) for c in choices]
    for letter, option in zip(letters, options):
        if option and norm_reply == option:
            return letter
    found = [
        letter
        for letter, option in zip(letters, options)
        if option and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", norm_reply)
    ]
    return found[0] if len(found) == 1 else None


def extract_choice_letter(
    reply: str, choices: Sequence[str] | None = None, *, num_choices: int | None = None
) -> str | None:
    """The option letter a reply names, or None when it names none (or several) unambiguously.

    Letters are restricted to `choice_letters(choices, num_choices)`. Rules, first hit wins:

    1. the whole reply is a letter, optionally wrapped: ``"B"``, ``"b"``, ``"(B)"``, ``"B."``,
       ``"B)"``, ``"**B**"``;
    2. the reply starts with an upper-case letter followed by ``.``, ``)`` or ``:``, or wrapped in
       parentheses: ``"B. cat"``, ``"B) cat"``, ``"(B) cat"``, ``"B: cat"``; a letter followed by a
       space counts only if the rest is that option's text (``"A cat"`` is ambiguous otherwise);
    3. the last explicit statement ``answer/option/choice [is] [:] X``: ``"The answer is B."``,
       ``"Answer: (C)"``;
    4. the only letter written as ``(X)`` anywhere;
    5. with `choices`: the reply is an option's text, or mentions exactly one option's text.

    lmms-eval uses a different extractor per task (AI2D: ``^\\s*([A-Z])\\.`` then exact match; MMMU:
    bracket/space/period search with a *random* letter when nothing parses; MMBench: its own
    heuristics then a GPT matcher). This one is deterministic and agrees with them on replies that
    follow the "answer with the option's letter" prompt; unparsed replies score 0.
    """
    letters = choice_letters(choices, num_choices)
    text = reply.strip().strip(_WRAPPING)
    bare = re.fullmatch(rf"\(?([{letters}])\)?[.:)]?", text, flags=re.IGNORECASE)
    if bare:
        return bare.group(1).upper()
    lead = re.match(rf"\(([{letters}])\)|([{letters}])[.):](?!\w)", text)
    if lead:
        return lead.group(1) or lead.group(2)
    if choices and len(text) > 2 and text[0] in letters and text[1] == " ":
        if _normalize_option(text[2:]) == _normalize_option(choices[letters.index(text[0])]):
            return text[0]
    statements = re.findall(_STATEMENT.format(letters=letters), text, flags=re.IGNORECASE)
    statements = [s for s in statements if s.isupper()]
    if statements:
        return statements[-1]
    parenthesized = set(re.findall(rf"\(([{letters}])\)", text))
    if len(parenthesized) == 1:
        return parenthesized.pop()
    if choices:
        return _letter_from_option_text(text, choices, letters)
    return None


def answer_letter(answer: str | int, num_choices: int | None = None) -> str:
    """The gold letter from a letter (``"B"``, ``"(B)"``) or a 0-based option index (``1``)."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        raise ValueError(f"expected an option letter or a 0-based index, got {answer!r}")
    if isinstance(answer, int):
        letter = string.ascii_uppercase[answer] if 0 <= answer < 26 else "?"
    else:
        letter = answer.strip().strip("()").upper()
    if len(letter) != 1 or letter not in string.ascii_uppercase:
        raise ValueError(f"expected an option letter or a 0-based index, got {answer!r}")
    if num_choices is not None and letter not in string.ascii_uppercase[:num_choices]:
        raise ValueError(f"answer {answer!r} is outside the {num_choices} choices")
    return letter


def scienceqa_letter(reply: str, *, mode: str = "lmms_eval") -> str | None:
    """The letter ScienceQA-IMG's reference scorers read from a reply, or None.

    ``"lmms_eval"`` (default): after stripping, the reply is a single letter (any case), or starts
    with an upper-case letter followed by ``.``; anything else (``"B)"``, ``"The answer is B"``) is
    unparsed. ``"llava"`` (LLaVA's ``eval_science_qa.py``): newlines become ``". "``; the stripped
    reply is one of A-E; or it starts with A-E followed by ``". "``; or it contains
    ``"The answer is X"``. Lower-case ``"b"`` is unparsed there. A letter beyond the options is
    returned as read (and scores 0).
    """
    if mode == "lmms_eval":
        text = reply.strip()
        if len(text) == 1 and text.upper() in string.ascii_uppercase:
            return text.upper()
        if len(text) >= 2 and text[0].isupper() and text[1] == ".":
            return text[0]
        return None
    if mode == "llava":
        text = reply.replace("\n", ". ")
        if text.strip() in "ABCDE" and len(text.strip()) == 1:
            return text.strip()
        if len(text) >= 3 and text[0] in "ABCDE" and text[1:3] == ". ":
            return text[0]
        stated = re.search(r"The answer is ([A-E])\.", text) or re.search(r"The answer is ([A-E])", text)
        return stated.group(1) if stated else None
    raise ValueError(f"unknown ScienceQA mode {mode!r}; choose from {', '.join(SCIENCEQA_MODES)}")
