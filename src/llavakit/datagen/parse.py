"""Reply text -> question/answer pairs, or a :class:`ReplyError` that says what is wrong.

Conversation and complex-reasoning replies use the format of the shipped prompt files::

    Question:
    What is the woman doing?
    ===
    Answer:
    She is chopping carrots.
    ===
    Question:
    ...

Separators are lines of three or more ``=`` (also accepted inline, ``Question: ... === Answer: ...``);
labels are ``Question:`` / ``Answer:`` at the start of a block or line, case-insensitive, optionally in
``**bold**``. Blocks must alternate, starting with a question and ending with an answer; any other
text (a preamble such as "Sure! Here is a conversation:") rejects the reply, so nothing a model says
about the task ends up in the training data.
"""

from __future__ import annotations

import re

from llavakit.datagen.errors import ReplyError

SEPARATOR = re.compile(r"(?:^|(?<=\s))={3,}(?=\s|$)")
LABEL_LINE = re.compile(r"(?im)^(?=[ \t]*(?:\*\*)?(?:question|answer)[ \t]*:)")
LABEL = re.compile(r"(?is)^(?:\*\*)?(question|answer)\s*:(?:\*\*)?\s*(.*)$")


def parse_qa(text: str) -> list[tuple[str, str]]:
    """Question/answer pairs in order; raises ReplyError for anything that does not fit the format."""
    blocks = [_block(piece) for piece in _pieces(text)]
    if not blocks:
        raise ReplyError("empty reply" if not text.strip() else "no 'Question:' / 'Answer:' blocks")
    pairs = []
    for index in range(0, len(blocks), 2):
        (label, question), following = blocks[index], blocks[index + 1] if index + 1 < len(blocks) else None
        if label != "question":
            raise ReplyError(f"block {index + 1} is an answer without a question before it")
        if following is None:
            raise ReplyError(f"question {len(pairs) + 1} has no answer: {question[:80]!r}")
        if following[0] != "answer":
            raise ReplyError(f"question {len(pairs) + 1} is followed by another question, not an answer")
        pairs.append((_nonempty(question, "question", len(pairs)), _nonempty(following[1], "answer", len(pairs))))
    return pairs


def _pieces(text: str) -> list[str]:
    pieces = []
    for part in SEPARATOR.split(text.replace("\r\n", "\n")):
        pieces += [p.strip() for p in LABEL_LINE.split(part) if p.strip()]
    return pieces


def _block(piece: str) -> tuple[str, str]:
    match = LABEL.match(piece)
    if match is None:
        raise ReplyError(f"text outside the Question:/Answer: blocks: {piece[:80]!r}")
    return match.group(1).lower(), match.group(2).strip()


def _nonempty(text: str, what: str, index: int) -> str:
    if not text:
        raise ReplyError(f"{what} {index + 1} is empty")
    return text


def parse_description(text: str) -> str:
    """A detailed description: plain prose, with no Question:/Answer: blocks."""
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise ReplyError("empty reply")
    if LABEL_LINE.search(text):
        raise ReplyError("a detailed description must be prose, not Question:/Answer: blocks")
    return text


def question_key(question: str) -> str:
    """What makes two questions "identical": case, spacing and final punctuation ignored."""
    return " ".join(question.lower().split()).rstrip(" ?.!")
