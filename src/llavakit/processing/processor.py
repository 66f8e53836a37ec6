"""The processor: conversations with images and videos -> model inputs.

It renders a conversation to text with placeholders, decides each medium's layout, writes exactly
``layout.token_count`` placeholder tokens for it, and turns the pixels into crops. Images and videos
are kept in the order their placeholders appear, which is the order the model scatters them in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llavakit import layout
from llavakit.config import LlavaConfig
from llavakit.errors import PlaceholderError
from llavakit.layout import VisualItem
from llavakit.processing import image as image_ops
from llavakit.processing.video import Frames, read_video, uniform_indices

# Used when a tokenizer has no chat template of its own: ChatML, media parts as placeholders.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Media:
    """One image or video of a sample, before pixels are computed."""

    kind: str  # "image" or "video"
    source: Any  # path, bytes, PIL image, or (video) a list of frames


@dataclass
class ModelInputs:
    """A batch ready for the model. ``visual_items`` follow placeholder order across the batch."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    pixel_values: torch.Tensor | None = None  # (total crops, 3, S, S)
    visual_items: list[VisualItem] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)  # real (unpadded) tokens per sample

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelInputs:
        pixels = self.pixel_values
        if pixels is not None:
            pixels = pixels.to(device=device, dtype=dtype or pixels.dtype)
        return ModelInputs(
            self.input_ids.to(device), self.attention_mask.to(device), pixels, self.visual_items, self.prompt_tokens
        )


class LlavaProcessor:
    """Turns conversations, images and videos into :class:`ModelInputs` for one model config."""

    def __init__(self, config: LlavaConfig, tokenizer: Any):
        self.config = config
        self.visual = config.visual
        self.tokenizer = tokenizer
        self.tokens_per_side = config.tokens_per_side
        self.image_token_id = self._token_id(config.image_token)
        self.video_token_id = self._token_id(config.video_token, required=False)
        self._placeholder = re.compile("|".join(re.escape(t) for t in (config.image_token, config.video_token)))

    @property
    def takes_video(self) -> bool:
        """Whether the model embeds videos. A config that names its image token but no video token
        (transformers' llava and llava_next checkpoints) has no video placeholder for the model to fill;
        a bare config (neither id yet) takes both ids from the tokenizer when the model is built."""
        return self.config.video_token_id is not None or self.config.image_token_id is None

    def check_takes(self, kinds: Sequence[str], name: str) -> None:
        """Refuse video for a model that does not take it, saying so (not as a placeholder count)."""
        if "video" in kinds and not self.takes_video:
            raise PlaceholderError(
                f"{name}: this model ({self.config.family}) does not take video: its config has no video token; "
                "give the frames as images, or use a model that takes video (such as llava_onevision)"
            )

    def _token_id(self, token: str, required: bool = True) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            if required:
                raise PlaceholderError(f"the tokenizer has no {token!r} token; add it as a special token")
            return None
        return int(token_id)

    # ---- conversations -> text + media ------------------------------------------------------
    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> tuple[str, list[Media]]:
        """Chat messages (OpenAI-style content parts) -> prompt text with placeholders, media in order."""
        media: list[Media] = []
        plain_messages = []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                plain_messages.append({"role": message["role"], "content": content})
                continue
            parts = []
            for part in content:
                kind = part.get("type")
                if kind in ("image", "video"):
                    media.append(Media(kind, part.get(kind, part.get("path", part.get("url")))))
                    parts.append({"type": kind})
                elif kind == "text":
                    parts.append({"type": "text", "text": part["text"]})
                else:
                    raise PlaceholderError(f"content part type {kind!r} is unknown; use text, image or video")
            plain_messages.append({"role": message["role"], "content": parts})
        self.check_takes([m.kind for m in media], "the conversation")
        template = getattr(self.tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        text = self.tokenizer.apply_chat_template(
            plain_messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        self._check_template_wrote_placeholders(text, media)
        return text, self._ordered(text, media)

    def _check_template_wrote_placeholders(self, text: str, media: list[Media]) -> None:
        """A chat template that drops image or video parts cannot be used with them: say it is the template."""
        for kind, token in (("image", self.config.image_token), ("video", self.config.video_token)):
            given, written = sum(m.kind == kind for m in media), text.count(token)
            if given > written:
                raise PlaceholderError(
                    f"the conversation has {given} {kind} parts but this model's chat template wrote {written} "
                    f"{token} placeholders: the chat template does not take {kind}s"
                )

    def _ordered(self, text: str, media: list[Media]) -> list[Media]:
        """Media in the order their placeholders appear (templates may move images first)."""
        images = iter([m for m in media if m.kind == "image"])
        videos = iter([m for m in media if m.kind == "video"])
        ordered = []
        for match in self._placeholder.finditer(text):
            source = images if match.group(0) == self.config.image_token else videos
            item = next(source, None)
            if item is not None:
                ordered.append(item)
        return ordered + [m for m in media if m not in ordered]

    # ---- text + media -> model inputs -------------------------------------------------------
    def __call__(
        self,
        texts: Sequence[str],
        media: Sequence[Sequence[Media]] | None = None,
        add_special_tokens: bool = False,
        padding_side: str = "left",
    ) -> ModelInputs:
        media = media if media is not None else [[] for _ in texts]
        if len(media) != len(texts):
            raise PlaceholderError(f"{len(texts)} texts but media for {len(media)} samples")
        expanded, items, pixels = [], [], []
        for index, (text, sample_media) in enumerate(zip(texts, media)):
            sample_items, sample_pixels = self._prepare_media(text, sample_media, index)
            expanded.append(self._expand(text, sample_items))
            items += sample_items
            pixels += sample_pixels
        encoded = self.tokenizer(
            expanded, padding=True, padding_side=padding_side, add_special_tokens=add_special_tokens, return_tensors="pt"
        )
        pixel_values = torch.from_numpy(np.concatenate(pixels)) if pixels else None
        mask = encoded["attention_mask"]
        return ModelInputs(encoded["input_ids"], mask, pixel_values, items, mask.sum(-1).tolist())

    def _prepare_media(self, text: str, media: Sequence[Media], index: int) -> tuple[list[VisualItem], list[np.ndarray]]:
        placeholders = [m.group(0) for m in self._placeholder.finditer(text)]
        wanted = ["image" if p == self.config.image_token else "video" for p in placeholders]
        given = [m.kind for m in media]
        self.check_takes(given, f"sample {index}")
        if wanted != given:
            raise PlaceholderError(
                f"sample {index}: the text has {wanted.count('image')} {self.config.image_token} and "
                f"{wanted.count('video')} {self.config.video_token} placeholders (in the order {wanted}) "
                f"but {given.count('image')} images and {given.count('video')} videos were given (order {given})"
            )
        multi_image = given.count("image") > 1
        items, pixels = [], []
        for position, medium in enumerate(media):
            name = f"sample {index}, {medium.kind} {position}"
            if medium.kind == "image":
                item, array = self.image_pixels(medium.source, multi_image, name)
            else:
                item, array = self.video_pixels(medium.source, name)
            items.append(item)
            pixels.append(array)
        return items, pixels

    def image_pixels(self, source: Any, multi_image: bool = False, name: str | None = None) -> tuple[VisualItem, np.ndarray]:
        picture = image_ops.open_image(source, self.visual.max_image_pixels, name)
        item = layout.plan_image(self.visual, (picture.height, picture.width), multi_image)
        return item, image_ops.normalize(image_ops.views_for(picture, item, self.visual, multi_image), self.visual)

    def video_pixels(self, source: Any, name: str | None = None) -> tuple[VisualItem, np.ndarray]:
        frames = self.load_video(source, name)
        first = frames.images[0]
        item = layout.plan_video(self.visual, (first.height, first.width), len(frames.images))
        crop = (self.visual.crop_size, self.visual.crop_size)
        views = [image_ops.resize(frame, crop, self.visual.resample) for frame in frames.images]
        return item, image_ops.normalize(views, self.visual)

    def load_video(self, source: Any, name: str | None = None) -> Frames:
        if isinstance(source, (str, Path, bytes)):  # bytes: an encoded file held in memory
            return read_video(source, self.visual.video_frames)
        source = list(source)
        if not source:
            raise PlaceholderError(f"{name}: a video given as frames needs at least one frame")
        # More frames than the model takes: sample them uniformly, as from a file.
        chosen = uniform_indices(len(source), min(len(source), self.visual.video_frames))
        frames = [image_ops.open_image(source[i], self.visual.max_image_pixels, f"{name} frame {i}") for i in chosen]
        return Frames(frames, [float(i) for i in chosen], float(len(source)))

    def num_tokens(self, item: VisualItem) -> int:
        return layout.token_count(item, self.visual, self.tokens_per_side)

    def _expand(self, text: str, items: list[VisualItem]) -> str:
        counts = iter(self.num_tokens(item) for item in items)
        return self._placeholder.sub(lambda m: m.group(0) * next(counts), text)
