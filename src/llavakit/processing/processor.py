"""The processor: conversations with images and videos -> model inputs.

It renders a conversation to text with placeholders, decides each medium's layout, writes exactly
``layout.token_count`` placeholder tokens for it, and turns the pixels into crops. Images and videos
are kept in the order their placeholders appear, which is the order the model scatters them in.

The text of the messages is tokenized as text: a message that contains ``<|im_end|>`` or
``<image>`` gets the tokens of those characters, never the special token. Special tokens and
placeholders come only from the chat template, so a user cannot end their turn and write a system
turn by typing it. A rendered :class:`Prompt` remembers which characters came from the messages.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llavakit import layout
from llavakit.config import LlavaConfig
from llavakit.errors import PlaceholderError
from llavakit.layout import VisualItem
from llavakit.errors import MediaError
from llavakit.processing import image as image_ops
from llavakit.processing.pixel_cache import Encoded, PixelCache, encoded_bytes
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
    source: Any  # path, bytes, PIL image, pixel_cache.Encoded, or (video) a list of frames


@dataclass(frozen=True)
class Prompt:
    """Rendered prompt text, with the character spans that came from the messages (kept as text)."""

    text: str
    literal_spans: tuple[tuple[int, int], ...] = ()  # sorted, non-overlapping [start, end)

    def segments(self) -> Iterator[tuple[int, str, bool]]:
        """(offset, text, is_literal) pieces covering the whole text in order."""
        position = 0
        for start, end in self.literal_spans:
            if start > position:
                yield position, self.text[position:start], False
            if end > start:
                yield start, self.text[start:end], True
            position = end
        if position < len(self.text) or not self.text:
            yield position, self.text[position:], False

    def template_matches(self, pattern: re.Pattern) -> Iterator[re.Match]:
        """Matches of ``pattern`` in the template's text only (not inside a message's text)."""
        for _, text, literal in self.segments():
            if not literal:
                yield from pattern.finditer(text)


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

    def __init__(self, config: LlavaConfig, tokenizer: Any, pixel_cache: PixelCache | None = None):
        self.config = config
        # Inference only: media given as encoded bytes (files, bytes, Encoded) are preprocessed once.
        self.pixel_cache = pixel_cache
        self.visual = config.visual
        self.tokenizer = tokenizer
        self.tokens_per_side = config.tokens_per_side
        self.image_token_id = self._token_id(config.image_token)
        self.video_token_id = self._token_id(config.video_token, required=False)
        self._placeholder = re.compile("|".join(re.escape(t) for t in (config.image_token, config.video_token)))
        # Every added token (specials, placeholders), longest first: where the tokenizer splits text.
        added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
        self._added = re.compile("|".join(re.escape(t) for t in added)) if added else None
        self._longest_added = len(added[0]) if added else 0
        self._text_backend = None  # built when first needed (see _plain_text_ids)

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
        prompt, media = self.render_prompt(messages, add_generation_prompt)
        return prompt.text, media

    def render_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> tuple[Prompt, list[Media]]:
        """Like :meth:`render`, remembering which characters are the messages' text.

        The template is rendered twice: with the texts, and with a unique marker in place of each
        text. Putting the texts back into the marked rendering must give the real one; then the
        texts' spans are known exactly. A template that rewrites message text (trims it, say)
        cannot be marked: its rendering is used as it is, and a text containing a special token is
        refused, since it could not be told apart from the template's own tokens.
        """
        media: list[Media] = []
        texts: list[str] = []
        nonce = uuid.uuid4().hex
        marker = re.compile(f"\ue000{nonce}(\\d+)\ue001")

        def literal(text: str, marked: bool) -> str:
            if not marked:
                return text
            texts.append(text)
            return f"\ue000{nonce}{len(texts) - 1}\ue001"

        def plain_messages(marked: bool) -> list[dict]:
            result = []
            for message in messages:
                content = message["content"]
                if isinstance(content, str):
                    result.append({"role": message["role"], "content": literal(content, marked)})
                    continue
                parts = []
                for part in content:
                    kind = part.get("type")
                    if kind in ("image", "video"):
                        if not marked:
                            media.append(Media(kind, part.get(kind, part.get("path", part.get("url")))))
                        parts.append({"type": kind})
                    elif kind == "text":
                        parts.append({"type": "text", "text": literal(part["text"], marked)})
                    else:
                        raise PlaceholderError(f"content part type {kind!r} is unknown; use text, image or video")
                result.append({"role": message["role"], "content": parts})
            return result

        template = getattr(self.tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE

        def apply(rendered_messages: list[dict]) -> str:
            return self.tokenizer.apply_chat_template(
                rendered_messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
            )

        unmarked = plain_messages(False)
        self.check_takes([m.kind for m in media], "the conversation")
        text = apply(unmarked)
        self._check_template_wrote_placeholders(text, media)
        marked = apply(plain_messages(True))
        pieces, spans, position = [], [], 0
        for match in marker.finditer(marked):
            pieces.append(marked[position:match.start()])
            start = sum(map(len, pieces))
            pieces.append(texts[int(match.group(1))])
            spans.append((start, start + len(pieces[-1])))
            position = match.end()
        pieces.append(marked[position:])
        if "".join(pieces) == text:
            prompt = Prompt(text, tuple(spans))
        else:
            self._refuse_special_tokens(texts)
            prompt = Prompt(text)
        return prompt, self._ordered(prompt, media)

    def _refuse_special_tokens(self, texts: Sequence[str]) -> None:
        for index, text in enumerate(texts):
            found = self._added.search(text) if self._added else None
            if found:
                raise PlaceholderError(
                    f"message text {index}: it contains the special token {found.group(0)!r}, and this chat "
                    "template rewrites message text, so it could not be kept apart from the template's own "
                    "tokens; remove it from the text")

    def _check_template_wrote_placeholders(self, text: str, media: list[Media]) -> None:
        """A chat template that drops image or video parts cannot be used with them: say it is the template."""
        for kind, token in (("image", self.config.image_token), ("video", self.config.video_token)):
            given, written = sum(m.kind == kind for m in media), text.count(token)
            if given > written:
                raise PlaceholderError(
                    f"the conversation has {given} {kind} parts but this model's chat template wrote {written} "
                    f"{token} placeholders: the chat template does not take {kind}s"
                )

    def _ordered(self, prompt: Prompt, media: list[Media]) -> list[Media]:
        """Media in the order their placeholders appear (templates may move images first)."""
        images = iter([m for m in media if m.kind == "image"])
        videos = iter([m for m in media if m.kind == "video"])
        ordered = []
        for match in prompt.template_matches(self._placeholder):
            source = images if match.group(0) == self.config.image_token else videos
            item = next(source, None)
            if item is not None:
                ordered.append(item)
        return ordered + [m for m in media if m not in ordered]

    # ---- text + media -> model inputs -------------------------------------------------------
    def __call__(
        self,
        texts: Sequence[str | Prompt],
        media: Sequence[Sequence[Media]] | None = None,
        add_special_tokens: bool = False,
        padding_side: str = "left",
    ) -> ModelInputs:
        """Texts (a plain string is all template: every special token in it counts) -> model inputs."""
        prompts = [text if isinstance(text, Prompt) else Prompt(text) for text in texts]
        media = media if media is not None else [[] for _ in prompts]
        if len(media) != len(prompts):
            raise PlaceholderError(f"{len(prompts)} texts but media for {len(media)} samples")
        ids, items, pixels = [], [], []
        for index, (prompt, sample_media) in enumerate(zip(prompts, media)):
            sample_items, sample_pixels = self._prepare_media(prompt, sample_media, index)
            ids.append(self._tokenize(self._expand(prompt, sample_items), add_special_tokens))
            items += sample_items
            pixels += sample_pixels
        encoded = self.tokenizer.pad({"input_ids": ids}, padding=True, padding_side=padding_side, return_tensors="pt")
        pixel_values = torch.from_numpy(np.concatenate(pixels)) if pixels else None
        mask = encoded["attention_mask"]
        return ModelInputs(encoded["input_ids"], mask, pixel_values, items, mask.sum(-1).tolist())

    def _tokenize(self, prompt: Prompt, add_special_tokens: bool) -> list[int]:
        """Token ids of a prompt whose literal spans are text, whatever characters they hold.

        When no added token touches a literal span, the whole text is tokenized at once (exactly
        what transformers does). Otherwise the text is split where the template's added tokens are,
        as the tokenizer itself splits at added tokens, and each piece between them is tokenized
        with special tokens read as plain text.
        """
        if not any(self._touches_added_token(prompt.text, start, end) for start, end in prompt.literal_spans):
            return list(self.tokenizer(prompt.text, add_special_tokens=add_special_tokens)["input_ids"])
        ids: list[int] = []
        pending: list[str] = []

        def flush() -> None:
            if pending:
                ids.extend(self._plain_text_ids("".join(pending)))
                pending.clear()

        for _, text, literal in prompt.segments():
            if literal:
                pending.append(text)
                continue
            position = 0
            for match in self._added.finditer(text):
                pending.append(text[position:match.start()])
                flush()
                ids.append(int(self.tokenizer.convert_tokens_to_ids(match.group(0))))
                position = match.end()
            pending.append(text[position:])
        flush()
        return self._with_special_tokens(ids) if add_special_tokens else ids

    def _plain_text_ids(self, text: str) -> list[int]:
        """Ids of ``text`` with special tokens read as characters.

        transformers' ``split_special_tokens=True`` flips a flag on the shared Rust tokenizer for the
        call, which would leak into calls from other threads (the server prepares requests in
        several); a private copy of the backend keeps the flag set for good instead.
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a Python tokenizer: the option holds no shared state
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        if self._text_backend is None:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(backend.to_str())
            copy.encode_special_tokens = True
            self._text_backend = copy
        return self._text_backend.encode(text, add_special_tokens=False).ids

    def _touches_added_token(self, text: str, start: int, end: int) -> bool:
        """Whether an added token's occurrence in ``text`` overlaps ``text[start:end]``."""
        if self._added is None or start == end:
            return False
        reach = self._longest_added - 1
        window = max(0, start - reach)
        return any(m.start() < end and start < m.end()
                   for m in self._added.finditer(text, window, end + reach))

    def _with_special_tokens(self, ids: list[int]) -> list[int]:
        """``ids`` wrapped as the tokenizer wraps a sequence when asked to add special tokens (BOS...)."""
        bare = list(self.tokenizer("a", add_special_tokens=False)["input_ids"])
        wrapped = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        start = next(i for i in range(len(wrapped)) if wrapped[i:i + len(bare)] == bare)
        return wrapped[:start] + ids + wrapped[start + len(bare):]

    def _prepare_media(self, prompt: Prompt, media: Sequence[Media], index: int) -> tuple[list[VisualItem], list[np.ndarray]]:
        placeholders = [m.group(0) for m in prompt.template_matches(self._placeholder)]
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
        """An image's visual item and (crops, 3, S, S) pixels (through ``pixel_cache`` when set:
        read-only then)."""

        def make(opened: Any, label: str | None) -> tuple[VisualItem, np.ndarray]:
            picture = opened.decode() if isinstance(opened, Encoded) else \
                image_ops.open_image(opened, self.visual.max_image_pixels, label)
            item = layout.plan_image(self.visual, (picture.height, picture.width), multi_image)
            return item, image_ops.normalize(image_ops.views_for(picture, item, self.visual, multi_image), self.visual)

        return self._through_cache("image", source, multi_image, name, make)

    def video_pixels(self, source: Any, name: str | None = None) -> tuple[VisualItem, np.ndarray]:
        """A video's visual item and (frames, 3, S, S) pixels (through ``pixel_cache`` when set)."""

        def make(opened: Any, label: str | None) -> tuple[VisualItem, np.ndarray]:
            if isinstance(opened, bytes) and label is not None:  # a file read for its hash: errors name it
                try:
                    return self._video_item(read_video(opened, self.visual.video_frames))
                except MediaError as err:
                    raise MediaError(f"video {label}: {str(err).split(': ', 1)[-1]}") from None
            return self._video_item(self.load_video(opened.decode() if isinstance(opened, Encoded) else opened,
                                                    label))

        return self._through_cache("video", source, False, name, make)

    def _through_cache(self, kind: str, source: Any, multi_image: bool, name: str | None,
                       make: Callable[[Any, str | None], tuple[VisualItem, np.ndarray]]) -> tuple[VisualItem, np.ndarray]:
        """``make(source, name)``, or the cached result for the same encoded bytes and settings.

        A file is read once: its bytes are hashed, then decoded on a miss (reading it again could
        decode a file replaced in between, stored under the old file's hash).
        """
        data = encoded_bytes(source) if self.pixel_cache is not None else None
        if data is None:
            return make(source, name)
        key = self.pixel_cache.key(kind, data, self.visual, multi_image)
        if isinstance(source, (str, Path)):
            label = f"{name} ({source})" if name else str(source)
            return self.pixel_cache.get_or_make(key, lambda: make(data, label))
        return self.pixel_cache.get_or_make(key, lambda: make(source, name))

    def _video_item(self, frames: Frames) -> tuple[VisualItem, np.ndarray]:
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

    def _expand(self, prompt: Prompt, items: list[VisualItem]) -> Prompt:
        """Each template placeholder repeated ``token_count`` times; literal spans move with the text."""
        counts = iter(self.num_tokens(item) for item in items)
        pieces, spans, length = [], [], 0
        for _, text, literal in prompt.segments():
            if not literal:
                text = self._placeholder.sub(lambda m: m.group(0) * next(counts), text)
            else:
                spans.append((length, length + len(text)))
            pieces.append(text)
            length += len(text)
        return Prompt("".join(pieces), tuple(spans))
