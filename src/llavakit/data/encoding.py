"""Segments -> input ids and labels, then placeholders -> as many tokens as the media become.

The conversation text is tokenized once, whole, exactly as ``apply_chat_template`` tokenizes it,
and every token takes the trained flag of the segment its characters fall in (from the fast
tokenizer's offsets). A token that straddles a trained/untrained boundary is an error: the template
would then train part of a token, and the ids would differ from the ones seen at inference.
Placeholders are single special tokens in the text; each is then repeated ``token_count`` times,
never split and never trained.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from llavakit.data.templates import Segment, TemplateError

IGNORE_INDEX = -100


def merge(segments: Sequence[Segment]) -> list[Segment]:
    """Adjacent segments with the same flag joined: only trained/untrained boundaries matter."""
    out: list[Segment] = []
    for segment in segments:
        if out and out[-1].trained == segment.trained:
            out[-1] = Segment(out[-1].text + segment.text, segment.trained)
        elif segment.text:
            out.append(segment)
    return out


def tokenize_segments(segments: Sequence[Segment], tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of the whole text; labels are the ids on trained tokens, -100 elsewhere."""
    segments = merge(segments)
    text = "".join(s.text for s in segments)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise TemplateError("the tokenizer gives no character offsets; use a fast (tokenizers) tokenizer") from None
    starts, position = [], 0
    for segment in segments:
        starts.append(position)
        position += len(segment.text)
    ids, labels = list(encoded["input_ids"]), []
    for token_id, (begin, end) in zip(ids, encoded["offset_mapping"]):
        index = max(bisect.bisect_right(starts, begin) - 1, 0)
        segment_end = starts[index] + len(segments[index].text)
        if end > segment_end:
            raise TemplateError(
                f"token {tokenizer.convert_ids_to_tokens(token_id)!r} spans the boundary between a prompt and a "
                f"reply (...{text[max(begin - 20, 0):end + 20]!r}...); the template must put such separators "
                "inside the reply (reply_lead)"
            )
        labels.append(token_id if segments[index].trained else IGNORE_INDEX)
    return ids, labels


def expand_placeholders(
    ids: Sequence[int], labels: Sequence[int], kinds: Sequence[int], counts: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Repeat the i-th placeholder token ``counts[i]`` times; ``kinds[i]`` is the token id it must be.

    ``kinds`` holds one token id per visual item, in placeholder order (image or video token id).
    """
    placeholder_ids = set(kinds)
    found = [token for token in ids if token in placeholder_ids]
    if found != list(kinds):
        raise ValueError(f"the tokenized text has placeholders {found} but the media need {list(kinds)}")
    out_ids, out_labels, item = [], [], 0
    for token, label in zip(ids, labels):
        if token in placeholder_ids:
            if label != IGNORE_INDEX:
                raise ValueError("a visual placeholder fell in a trained span")
            out_ids += [token] * counts[item]
            out_labels += [IGNORE_INDEX] * counts[item]
            item += 1
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels
