"""An OpenAI request -> a prepared prompt: limits checked, media read and decoded, tokens counted.

Everything that can refuse a request happens here, before it is queued: too many images, a URL the
operator did not allow, an image that is not PNG/JPEG/WebP or has too many pixels, and a prompt
plus completion (visual tokens included) longer than the context. The model never sees a request
that could fail for its input.

Cheap checks come before costly work: a text too large to fit the context whatever its tokens is
refused by its size before it is tokenized, and media are decoded only once their headers say the
request's pixels fit both the per-request limit and what is left of the in-flight pixel budget.
Decoding and tokenizing run in a small pool of worker threads, so only a few requests decode at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool

from llavakit.api import Llava
from llavakit.errors import LlavakitError
from llavakit.engine import SamplingSettings
from llavakit.processing.pixel_cache import Encoded
from llavakit.processing.processor import ModelInputs
from llavakit.serving import media
from llavakit.serving.budget import PixelBudget
from llavakit.serving.errors import APIError, invalid
from llavakit.serving.protocol import (
    ChatCompletionRequest,
    ImagePart,
    TextPart,
    VideoPart,
)
from llavakit.serving.settings import ServerSettings
from llavakit.serving.token_bound import bytes_per_token, min_tokens


@dataclass
class PreparedRequest:
    inputs: ModelInputs  # one prompt
    settings: SamplingSettings
    stop: list[str]
    n: int
    ignore_eos: bool = False

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs.prompt_tokens[0])


@dataclass
class _Fetched:
    kind: str  # "image" or "video"
    mime: str | None
    data: bytes
    param: str
    header: Image.Image | media.VideoHeader | None = None  # read before anything is decoded

    def pixels(self, video_frames: int) -> int:
        if isinstance(self.header, media.VideoHeader):
            return self.header.width * self.header.height * video_frames
        width, height = self.header.size
        return width * height


class RequestPreparer:
    def __init__(self, llava: Llava, settings: ServerSettings):
        self.llava = llava
        self.settings = settings
        self.visual_ids = {i for i in (llava.config.image_token_id, llava.config.video_token_id) if i is not None}
        self.bytes_per_token = bytes_per_token(llava.tokenizer)
        self.budget = PixelBudget(settings.max_decoding_pixels)
        self._workers = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="llavakit-prepare")

    async def __call__(self, request: ChatCompletionRequest) -> PreparedRequest:
        self._check_request(request)
        fetched = await self._fetch(request)
        await run_in_threadpool(self._read_headers, fetched)
        pixels = self._reserve_pixels(fetched)
        inputs = await self._in_worker(pixels, self._build_inputs, request, fetched)
        return PreparedRequest(inputs, self._sampling(request, inputs), list(request.stop), request.n,
                               request.ignore_eos)

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def _in_worker(self, pixels: int, function, *args):
        """``function(*args)`` in the preparation pool; the reserved pixels are released when it ends,
        or at once if it never started (the request timed out or its client left while it waited)."""

        def work():
            try:
                return function(*args)
            finally:
                self.budget.release(pixels)

        try:
            future = self._workers.submit(work)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self.budget.release(pixels)
            raise APIError(503, "the server is shutting down; retry on another instance", "shutting_down") from None
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancel():
                self.budget.release(pixels)
            raise

    # ---- cheap checks first ---------------------------------------------------------------
    def _check_request(self, request: ChatCompletionRequest) -> None:
        limits = self.settings
        if request.model != limits.model_name:
            raise APIError(404, f"the model {request.model!r} does not exist; this server serves "
                                f"{limits.model_name!r}", "model_not_found", "model")
        if request.n > limits.max_n:
            raise invalid(f"n = {request.n} is more than this server allows ({limits.max_n})", "n", "invalid_value")
        parts = [p for m in request.messages if isinstance(m.content, list) for p in m.content]
        images = sum(isinstance(p, ImagePart) for p in parts)
        videos = sum(isinstance(p, VideoPart) for p in parts)
        if images > limits.max_images:
            raise invalid(f"the request has {images} images; this server accepts at most {limits.max_images} "
                          "per request", "messages", "too_many_images")
        if videos > limits.max_videos:
            raise invalid(f"the request has {videos} videos; this server accepts at most {limits.max_videos} "
                          "per request", "messages", "too_many_videos")
        self._check_text(request)
        self._check_text_size(request)

    def _check_text(self, request: ChatCompletionRequest) -> None:
        """Typed placeholder tokens would claim media the request does not have: say so plainly."""
        reserved = [t for t in (self.llava.config.image_token, self.llava.config.video_token) if t]
        for m, message in enumerate(request.messages):
            listed = isinstance(message.content, list)
            content = message.content if listed else [TextPart(type="text", text=message.content or "")]
            for p, part in enumerate(content):
                token = next((t for t in reserved if isinstance(part, TextPart) and t in part.text), None)
                if token:
                    param = f"messages.{m}.content" + (f".{p}.text" if listed else "")
                    raise invalid(f"{param}: the text contains {token!r}, which this model reserves for media; "
                                  "send images as image_url parts and remove it from the text", param, "reserved_token")

    def _check_text_size(self, request: ChatCompletionRequest) -> None:
        """Refuse text that cannot fit the context whatever it is, by its size, before tokenizing it."""
        size = 0
        for message in request.messages:
            texts = [message.content or ""] if not isinstance(message.content, list) else [
                part.text for part in message.content if isinstance(part, TextPart)]
            size += sum(len(text.encode("utf-8")) for text in texts)
        least = min_tokens(size, self.bytes_per_token)
        completion = max(request.completion_limit or 1, 1)
        context = self.settings.max_model_len
        if least + completion > context:
            raise invalid(
                f"this model's maximum context length is {context} tokens, but the messages have {size} bytes of "
                f"text, which this model's tokenizer makes at least {least} tokens, and {completion} are needed for "
                "the completion. Shorten the messages.", "messages", "context_length_exceeded")

    # ---- media ------------------------------------------------------------------------------
    async def _fetch(self, request: ChatCompletionRequest) -> dict[tuple[int, int], _Fetched]:
        fetched = {}
        for m, message in enumerate(request.messages):
            for p, part in enumerate(message.content if isinstance(message.content, list) else []):
                if isinstance(part, TextPart):
                    continue
                kind = "image" if isinstance(part, ImagePart) else "video"
                url = part.image_url.url if kind == "image" else part.video_url.url
                param = f"messages.{m}.content.{p}.{kind}_url.url"
                try:
                    mime, data = await media.read_url(url, self.settings.media, f"{kind} {param}")
                except LlavakitError as err:
                    raise invalid(str(err), param, "invalid_media") from None
                fetched[m, p] = _Fetched(kind, mime, data, param)
        return fetched

    def _read_headers(self, fetched: dict[tuple[int, int], _Fetched]) -> None:
        """Each medium's header, checked (format, size, per-image pixels); nothing decoded yet."""
        policy = self.settings.media
        for item in fetched.values():
            try:
                if item.kind == "image":
                    item.header = media.open_image(item.data, item.mime, policy, f"image {item.param}")
                else:
                    item.header = media.read_video_header(item.data, item.mime, policy, f"video {item.param}")
            except LlavakitError as err:
                raise invalid(str(err), item.param, "invalid_media") from None

    def _reserve_pixels(self, fetched: dict[tuple[int, int], _Fetched]) -> int:
        limits = self.settings
        pixels = sum(item.pixels(self.llava.config.visual.video_frames) for item in fetched.values())
        if pixels > limits.max_request_pixels:
            raise APIError(413, f"the request's images and video frames have {pixels} pixels in all; this server "
                                f"decodes at most {limits.max_request_pixels} per request. Send fewer or smaller "
                                "images.", "too_many_pixels", "messages")
        if not self.budget.reserve(pixels):
            raise APIError(429, f"the server is busy decoding other requests' images ({self.budget.in_flight} of "
                                f"{self.budget.limit} pixels in flight; this request needs {pixels}); retry shortly",
                           "decoding_busy", headers={"Retry-After": "1"})
        return pixels

    def _part(self, item: _Fetched) -> dict[str, Any]:
        """The medium as a conversation part: its bytes, decoded by :meth:`_decode` only if the
        processor's pixel cache does not hold them already (a follow-up turn about the same image)."""
        return {"type": item.kind, item.kind: Encoded(item.data, lambda: self._decode(item))}

    def _decode(self, item: _Fetched) -> Any:
        try:
            if item.kind == "image":
                return media.load_image(item.header, f"image {item.param}")
            return media.load_video(item.data, item.header, self.llava.config.visual.video_frames,
                                    f"video {item.param}")
        except LlavakitError as err:
            raise invalid(str(err), item.param, "invalid_media") from None

    # ---- conversation -> inputs (in a worker thread: decoding and tiling cost CPU) -------------
    def _build_inputs(self, request: ChatCompletionRequest, fetched: dict[tuple[int, int], _Fetched]) -> ModelInputs:
        conversation = []
        for m, message in enumerate(request.messages):
            role = "system" if message.role == "developer" else message.role
            if not isinstance(message.content, list):
                conversation.append({"role": role, "content": message.content or ""})
                continue
            content = [
                {"type": "text", "text": part.text} if isinstance(part, TextPart) else self._part(fetched[m, p])
                for p, part in enumerate(message.content)
            ]
            conversation.append({"role": role, "content": content})
        try:
            return self.llava.prepare([conversation])
        except LlavakitError as err:
            raise invalid(str(err), "messages", "invalid_messages") from None

    # ---- the context budget ---------------------------------------------------------------------
    def _sampling(self, request: ChatCompletionRequest, inputs: ModelInputs) -> SamplingSettings:
        context, prompt = self.settings.max_model_len, int(inputs.prompt_tokens[0])
        visual = sum(int((inputs.input_ids == i).sum()) for i in self.visual_ids)
        wanted = request.completion_limit
        completion = wanted if wanted is not None else min(self.settings.default_max_tokens, context - prompt)
        if prompt + max(completion, 1) > context:
            raise invalid(
                f"this model's maximum context length is {context} tokens, but the request needs "
                f"{prompt + max(completion, 1)}: {prompt} in the messages ({visual} of them visual tokens) and "
                f"{max(completion, 1)} for the completion. Shorten the messages, send fewer or smaller images, "
                "or lower max_tokens.", "messages", "context_length_exceeded")
        top_k = max(request.top_k, 0)
        return SamplingSettings(completion, request.temperature, request.top_p, top_k, request.repetition_penalty,
                                request.seed)
