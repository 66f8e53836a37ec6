"""A sample as the model sees it: trained spans marked, visual runs collapsed, token counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from llavakit.data.encoding import IGNORE_INDEX

ANSI = {"trained": ("\033[1;32m", "\033[0m"), "visual": ("\033[36m", "\033[0m")}
MARKS = {"trained": ("[[", "]]"), "visual": ("", "")}


@dataclass(frozen=True)
class TokenCounts:
    text: int
    visual: int
    trained: int

    @property
    def total(self) -> int:
        return self.text + self.visual


def counts(ids: Sequence[int], labels: Sequence[int], placeholder_ids: set[int]) -> TokenCounts:
    visual = sum(1 for token in ids if token in placeholder_ids)
    trained = sum(1 for label in labels if label != IGNORE_INDEX)
    return TokenCounts(len(ids) - visual, visual, trained)


def marked_text(ids: Sequence[int], labels: Sequence[int], tokenizer: Any, placeholder_ids: set[int],
                color: bool = False) -> str:
    """The decoded sample; trained runs in [[...]] (or green), each visual run as <image x N>."""
    def kind(pair):
        token, label = pair
        return "visual" if token in placeholder_ids else ("trained" if label != IGNORE_INDEX else "prompt")

    pieces = []
    for name, run in groupby(zip(ids, labels), key=kind):
        tokens = [token for token, _ in run]
        if name == "visual":
            text = f"<{tokenizer.convert_ids_to_tokens(tokens[0]).strip('<>')} x {len(tokens)}>"
        else:
            text = tokenizer.decode(tokens, skip_special_tokens=False)
        if name != "prompt":
            start, end = (ANSI if color else MARKS)[name]
            text = f"{start}{text}{end}"
        pieces.append(text)
    return "".join(pieces)
