"""Validated replies: parse a reply of one response type and check it can be training data.

A reply is refused (never repaired) when it was cut by the token limit, does not parse, has an
answer shorter than the type's minimum, contains an ``<image>`` / ``<video>`` placeholder (it would
break the data pipeline), or mentions a forbidden phrase (by default, ones that give away the
text-only context, like "bounding box"). Repeated questions within one reply are dropped, first kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from llavakit.datagen.errors import ReplyError
from llavakit.datagen.parse import parse_description, parse_qa, question_key

PLACEHOLDERS = ("<image>", "<video>")
FORBIDDEN = ("bounding box", "as an ai language model", "the given captions", "the provided captions")


@dataclass(frozen=True)
class ReplySettings:
    max_questions: int = 10  # conversation: more pairs than this is a runaway reply
    min_answer_words: int = 1  # conversation answers
    min_reasoning_words: int = 15  # the complex-reasoning answer
    min_description_words: int = 20
    forbidden_phrases: tuple[str, ...] = FORBIDDEN


@dataclass(frozen=True)
class ParsedReply:
    pairs: tuple[tuple[str, str], ...]  # (question, answer); a description has question "" (the instruction)
    duplicates_dropped: int = 0


def parse_reply(kind: str, text: str | None, finish_reason: str | None, settings: ReplySettings) -> ParsedReply:
    if finish_reason == "length":
        raise ReplyError("truncated: the reply hit the max_tokens limit (finish_reason=length)")
    text = text or ""
    _check_text(text, settings)
    if kind == "detail":
        description = parse_description(text)
        _min_words(description, settings.min_description_words, "the description")
        return ParsedReply((("", description),))
    pairs, dropped = _unique(parse_qa(text))
    if kind == "complex_reasoning":
        if len(pairs) != 1:
            raise ReplyError(f"complex reasoning needs exactly one question, got {len(pairs)}")
        _min_words(pairs[0][1], settings.min_reasoning_words, "the answer")
    else:
        if len(pairs) > settings.max_questions:
            raise ReplyError(f"{len(pairs)} questions, more than max_questions={settings.max_questions}")
        for index, (_, answer) in enumerate(pairs):
            _min_words(answer, settings.min_answer_words, f"answer {index + 1}")
    return ParsedReply(tuple(pairs), dropped)


def _check_text(text: str, settings: ReplySettings) -> None:
    for token in PLACEHOLDERS:
        if token in text:
            raise ReplyError(f"the reply contains the placeholder {token}")
    lowered = text.lower()
    for phrase in settings.forbidden_phrases:
        if phrase.lower() in lowered:
            raise ReplyError(f"the reply mentions {phrase!r} (a forbidden phrase)")


def _min_words(text: str, minimum: int, what: str) -> None:
    words = len(text.split())
    if words < minimum:
        raise ReplyError(f"{what} has {words} words, fewer than the minimum {minimum}")


def _unique(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    seen: set[str] = set()
    kept = []
    for question, answer in pairs:
        key = question_key(question)
        if key not in seen:
            seen.add(key)
            kept.append((question, answer))
    return kept, len(pairs) - len(kept)
