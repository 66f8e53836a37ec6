"""The OpenAI chat-completions wire format: typed requests, responses and stream chunks.

Requests accept the OpenAI fields (plus vLLM's ``top_k``, ``repetition_penalty`` and ``video_url``
parts). Unknown fields are ignored, as OpenAI-compatible servers do; known features this server does
not implement (logprobs, tools, penalties other than repetition) are refused when set, never
silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _valid_unicode(value: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"): no tokenizer, encoder or log takes them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = value[err.start]
        raise ValueError(f"is not valid Unicode: it has a lone surrogate ({ascii(bad)}) at character {err.start}; "
                         "send UTF-8 text") from None
    return value


# Every string of a request that the server reads is checked (unknown fields are ignored, never read).
Text = Annotated[str, AfterValidator(_valid_unicode)]


# ---- requests ---------------------------------------------------------------------------------
class MediaURL(_Lenient):
    url: Text = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: Text


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(_Lenient):
    type: Literal["video_url"]
    video_url: MediaURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: Text
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # 0 = greedy; OpenAI's default is 1
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # vLLM extension: 0 or -1 = off
    repetition_penalty: float = Field(1.0, gt=0, le=10)  # vLLM extension
    ignore_eos: bool = False  # vLLM extension: generate to the token limit (load tests, benchmarks)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Text | list[Text] | None = Field(None, validate_default=True)  # a list after validation
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # OpenAI features this server does not implement: accepted only at their neutral values.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 16 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("give at most 16 non-empty stop strings of at most 256 characters")
        return stops

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value:
            raise ValueError("is not supported by this server; leave it out (repetition_penalty is supported)")
        return value

    @field_validator("logprobs", "top_logprobs", "logit_bias", "tools")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value:
            raise ValueError("is not supported by this server; leave it out")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type") != "text":
            raise ValueError("only {'type': 'text'} is supported by this server")
        return value

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---- responses --------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int  # every prompt token, visual placeholders included
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llavakit"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
