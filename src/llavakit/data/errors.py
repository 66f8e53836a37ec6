"""Bad data: one error type that names the sample, its files and the reason, and the skip report.

The default policy is to fail on the first bad sample. With ``on_error="skip"`` a bad sample is
left out (never replaced by another one) and recorded; the report lists every skipped sample with
its reason, so nothing disappears silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from llavakit.errors import LlavakitError

OnError = Literal["raise", "skip"]

# Reasons, as short stable codes: the report groups by them.
MISSING_MEDIA = "missing_media"
CORRUPT_MEDIA = "corrupt_media"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
MALFORMED = "malformed_conversation"
TOO_LONG = "too_long"
TEMPLATE = "template"
OUTSIDE_MEDIA_ROOT = "outside_media_root"


class DataError(LlavakitError):
    """A sample that cannot be trained on; ``str()`` names the sample id, the data file and the reason."""

    def __init__(self, sample_id: str, data_file: str, code: str, reason: str, media_file: str | None = None):
        self.sample_id, self.data_file, self.code = sample_id, data_file, code
        self.reason, self.media_file = reason, media_file
        media = f", media {media_file}" if media_file else ""
        super().__init__(f"sample {sample_id!r} ({data_file}{media}): {code}: {reason}")

    def __reduce__(self):  # sent whole from a data worker process (train.prefetch)
        return type(self), (self.sample_id, self.data_file, self.code, self.reason, self.media_file)

    def skipped(self, index: int) -> SkippedSample:
        return SkippedSample(index, self.sample_id, self.data_file, self.code, self.reason, self.media_file)


@dataclass(frozen=True)
class SkippedSample:
    index: int  # position in the dataset (the mixture's sample list)
    sample_id: str
    data_file: str
    code: str
    reason: str
    media_file: str | None = None


class SkipReport:
    """Every skipped sample once (epochs and workers may report the same one again)."""

    def __init__(self, skipped: Iterable[SkippedSample] = ()):
        self._by_index: dict[int, SkippedSample] = {}
        self.extend(skipped)

    def extend(self, skipped: Iterable[SkippedSample]) -> None:
        for item in skipped:
            self._by_index.setdefault(item.index, item)

    def __len__(self) -> int:
        return len(self._by_index)

    @property
    def samples(self) -> list[SkippedSample]:
        return [self._by_index[i] for i in sorted(self._by_index)]

    def counts(self) -> dict[str, int]:
        return dict(Counter(item.code for item in self.samples))

    def summary(self) -> str:
        if not self._by_index:
            return "skipped 0 samples"
        by_code = ", ".join(f"{code}: {n}" for code, n in sorted(self.counts().items()))
        return f"skipped {len(self)} samples ({by_code})"

    def write(self, path: str | Path) -> Path:
        """One JSON line per skipped sample, in dataset order."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in self.samples))
        return path
