"""The training dataset: entries -> encoded samples (ids, labels, visual items, crops), lazily.

The dataset holds entries (paths and text) only; pixels are decoded in ``__getitem__`` and handed
on, cached only when ``DataSettings.media_cache_mb`` allows (within that budget), so by default
memory does not grow with the images. Tokenized conversations are kept (up to
``DataSettings.token_cache`` of them), since rendering and tokenizing them again each epoch is pure
repetition. Bad samples follow ``on_error``: raise a DataError, or return a :class:`SkippedSample`
that the collator drops and reports. A sample is never replaced by another one, never truncated,
and visual tokens are never split.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from llavakit.data import media as media_ops
from llavakit.data.encoding import IGNORE_INDEX, expand_placeholders, tokenize_segments
from llavakit.data.errors import MALFORMED, PLACEHOLDER_MISMATCH, TEMPLATE, TOO_LONG, DataError, OnError, SkippedSample
from llavakit.data.placement import PlacementSettings, place_images
from llavakit.data.records import Entry, Modality, Sample, parse_entry
from llavakit.data.sources import EntryTable
from llavakit.data.templates import Segment, TemplateError, resolve_template
from llavakit.layout import VisualItem

if TYPE_CHECKING:
    from llavakit.processing.processor import LlavaProcessor


class DataSettings(BaseModel):
    """How samples become token sequences; shared by training, ``llavakit data`` and the tests."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field("auto", description="chat template: auto (the tokenizer's own, else chatml), tokenizer, "
                                              "plain, chatml, qwen, vicuna_v1, llama3")
    max_length: int = Field(4096, ge=1, description="tokens per sample, visual ones included; longer samples are "
                                                    "bad data")
    on_error: OnError = Field("raise", description="a bad sample: raise (stop, naming it) or skip (leave it out "
                                                   "and list it in RUN/skipped.jsonl)")
    allow_outside_media_root: bool = Field(
        False, description="media paths may leave their folder ('..', absolute paths, symlinks out); refused by "
                           "default so a dataset from elsewhere reads only the media it was given")
    placement: PlacementSettings = Field(PlacementSettings(), description="where the images of multi-image "
                                                                          "samples go")
    time_instruction: bool = Field(False, description="LLaVA-Video: video duration and frame times in the prompt")
    # Tokenized conversations kept for reuse (samples, 0: off). Rendering a conversation through a
    # Jinja chat template and tokenizing it cost a fifth of a quickstart stage-2 step on 2 CPU
    # cores, and every epoch (and the length pre-pass) repeated it for the same text.
    token_cache: int = Field(100_000, ge=0, description="tokenized conversations kept for reuse (0: off)")
    # Decoded crops kept across epochs, in MiB (0: off; media_ops.MediaCache). Worth it when the
    # decoded data fits in memory and a stage runs several epochs over it (the quickstart's stages);
    # each DataLoader worker keeps its own.
    media_cache_mb: float = Field(0.0, ge=0, description="MiB of decoded crops kept across epochs, per process "
                                                         "(0: off)")


@dataclass
class EncodedSample:
    index: int
    sample_id: str
    modality: Modality
    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long, -100 where not trained
    visual_items: list[VisualItem]
    pixel_values: np.ndarray | None  # (crops, 3, S, S) float32, items in placeholder order
    visual_tokens: int

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def text_tokens(self) -> int:
        return self.length - self.visual_tokens


@dataclass(frozen=True)
class LengthInfo:
    """What the sampler and the statistics need, from text and file headers (no decoding)."""

    modality: Modality
    text_tokens: int
    visual_tokens: int

    @property
    def total(self) -> int:
        return self.text_tokens + self.visual_tokens


class LlavaDataset(Dataset):
    """Map-style dataset over LLaVA entries for one model's processor (tokenizer + visual config)."""

    def __init__(self, entries: Sequence[Entry], processor: LlavaProcessor, settings: DataSettings | None = None):
        # An EntryTable builds entries on access (millions of samples, little memory): keep it as is.
        self.entries = entries if isinstance(entries, EntryTable) else list(entries)
        self.processor = processor
        self.settings = settings or DataSettings()
        self.tokenizer = processor.tokenizer
        config = processor.config
        self.tokens = (config.image_token, config.video_token)
        self.template = resolve_template(self.settings.template, self.tokenizer, self.tokens)
        self._lengths: list[LengthInfo | None] | None = None
        self.prepass_skipped: list[SkippedSample] = []
        # turns -> (ids, labels) as compact int arrays; the key is the text itself, so a sample whose
        # turns change (video time instructions) is tokenized anew.
        self._tokenized: dict[tuple, tuple[array, array]] = {}
        mb = self.settings.media_cache_mb
        self.media_cache = media_ops.MediaCache(int(mb * 2**20)) if mb > 0 else None

    def __len__(self) -> int:
        return len(self.entries)

    # ---- pure steps ---------------------------------------------------------------------------
    def sample(self, index: int) -> Sample:
        """The validated sample in its image placement (no file is opened)."""
        sample = parse_entry(self.entries[index], *self.tokens, self.settings.allow_outside_media_root)
        return place_images(sample, self.settings.placement, index)

    def segments(self, index: int, sample: Sample | None = None) -> list[Segment]:
        sample = sample or self.sample(index)
        try:
            return self.template.segments(sample.turns, self.tokens)
        except TemplateError as err:
            raise self.entries[index].error(TEMPLATE, str(err)) from None

    def _tokenize(self, index: int, sample: Sample) -> tuple[list[int], list[int]]:
        cached = self._tokenized.get(sample.turns)
        if cached is not None:
            return cached[0].tolist(), cached[1].tolist()
        try:
            ids, labels = tokenize_segments(self.segments(index, sample), self.tokenizer)
        except TemplateError as err:
            raise self.entries[index].error(TEMPLATE, str(err)) from None
        if len(self._tokenized) < self.settings.token_cache:
            self._tokenized[sample.turns] = (array("i", ids), array("i", labels))
        return ids, labels

    # ---- lengths without decoding -------------------------------------------------------------
    def length_info(self, index: int) -> LengthInfo:
        """Token counts from the text and the media headers; raises DataError for bad samples."""
        entry, sample = self.entries[index], self.sample(index)
        items = media_ops.planned_items(entry, sample, self.processor)
        if self.settings.time_instruction and sample.video is not None:
            frames = self.processor.visual.video_frames  # times unknown before decoding: may be a few tokens short
            sample = media_ops.with_time_instruction(sample, 0.0, [0.0] * frames)
        ids, _ = self._tokenize(index, sample)
        visual = sum(self.processor.num_tokens(item) for item in items)
        info = LengthInfo(sample.modality, len(ids) - len(items), visual)
        self._check_length(index, info.total)
        return info

    def lengths(self, progress: bool = False) -> list[LengthInfo | None]:
        """Every sample's LengthInfo, computed once. Under ``on_error="skip"`` a bad sample gets None
        and is recorded in ``prepass_skipped``; under ``raise`` the first bad sample raises."""
        if self._lengths is None:
            indices = range(len(self))
            if progress:
                from tqdm import tqdm

                indices = tqdm(indices, desc="lengths", unit="sample")
            out, skipped = [], []
            for index in indices:
                try:
                    out.append(self.length_info(index))
                except DataError as err:
                    if self.settings.on_error == "raise":
                        raise
                    out.append(None)
                    skipped.append(err.skipped(index))
            self._lengths, self.prepass_skipped = out, skipped
        return self._lengths

    # ---- full encoding ------------------------------------------------------------------------
    def encode(self, index: int) -> EncodedSample:
        """Decode media and build ids and labels; raises DataError for a bad sample."""
        entry, sample = self.entries[index], self.sample(index)
        loaded = media_ops.load_media(entry, sample, self.processor, self.media_cache)
        if self.settings.time_instruction and loaded.timestamps is not None:
            sample = media_ops.with_time_instruction(sample, loaded.duration, loaded.timestamps)
        ids, labels = self._tokenize(index, sample)
        kinds = [self.processor.video_token_id if i.kind == "video" else self.processor.image_token_id
                 for i in loaded.items]
        if None in kinds:
            raise entry.error(PLACEHOLDER_MISMATCH, f"the tokenizer has no {self.tokens[1]} token for the video")
        counts = [self.processor.num_tokens(item) for item in loaded.items]
        try:
            ids, labels = expand_placeholders(ids, labels, kinds, counts)
        except ValueError as err:
            raise entry.error(PLACEHOLDER_MISMATCH, str(err)) from None
        self._check_length(index, len(ids))
        if all(label == IGNORE_INDEX for label in labels):
            raise entry.error(MALFORMED, "no token is trained (the replies are empty after templating)")
        pixels = np.concatenate(loaded.pixels) if loaded.pixels else None
        return EncodedSample(
            index, sample.sample_id, sample.modality, torch.tensor(ids, dtype=torch.long),
            torch.tensor(labels, dtype=torch.long), loaded.items, pixels, sum(counts),
        )

    def _check_length(self, index: int, length: int) -> None:
        if length > self.settings.max_length:
            raise self.entries[index].error(
                TOO_LONG, f"{length} tokens (visual included) exceed max_length={self.settings.max_length}; "
                "the sample is refused whole rather than cut (an answer or an image would be lost)"
            )

    def __getitem__(self, index: int) -> EncodedSample | SkippedSample:
        try:
            return self.encode(index)
        except DataError as err:
            if self.settings.on_error == "raise":
                raise
            return err.skipped(index)

    def with_settings(self, **changes: Any) -> LlavaDataset:
        """The same entries under other settings (e.g. another template for inspection)."""
        settings = self.settings.model_copy(update=changes)
        return LlavaDataset(self.entries, self.processor, settings)


def sample_lengths(dataset: LlavaDataset) -> list[int]:
    """Total tokens per sample (0 for skipped ones), for samplers that take plain integers."""
    return [info.total if info is not None else 0 for info in dataset.lengths()]


__all__ = ["DataSettings", "EncodedSample", "LengthInfo", "LlavaDataset", "sample_lengths"]
