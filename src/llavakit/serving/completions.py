"""Answers of a submitted job: one ChatCompletion, or a stream of OpenAI chunks as server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llavakit.engine import Request
from llavakit.serving.errors import APIError
from llavakit.serving.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from llavakit.serving.results import FinishEvent, ResultQueue, TextEvent


@dataclass
class Answer:
    """What one request needs to write its response."""

    job: Request
    results: ResultQueue
    model: str
    prompt_tokens: int
    deadline: float  # event-loop time
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, completion_tokens: int) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=self.prompt_tokens + completion_tokens)


async def complete(answer: Answer) -> ChatCompletion:
    n = answer.job.n
    texts: list[list[str]] = [[] for _ in range(n)]
    finished: dict[int, FinishEvent] = {}
    try:
        async for event in answer.results.events(answer.deadline, answer.job.cancel):
            if isinstance(event, TextEvent):
                texts[event.choice].append(event.delta)
            else:
                finished[event.choice] = event
    finally:
        answer.job.cancel()  # no-op when done; stops the rows if this handler was cancelled
    choices = [Choice(index=i, message=AssistantMessage(content="".join(texts[i])), finish_reason=finished[i].reason)
               for i in range(n)]
    completion = sum(len(event.token_ids) for event in finished.values())
    return ChatCompletion(id=answer.id, created=answer.created, model=answer.model, choices=choices,
                          usage=answer.usage(completion))


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def _chunk(answer: Answer, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
    data = ChatCompletionChunk(id=answer.id, created=answer.created, model=answer.model, choices=choices,
                               usage=usage).model_dump(exclude_none=False)
    for choice in data["choices"]:  # OpenAI deltas carry only the fields that are set
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    if usage is None:
        data.pop("usage")
    return sse(data)


async def stream(answer: Answer, include_usage: bool) -> AsyncIterator[str]:
    """Chunks: a role delta per choice, content deltas, a finish chunk per choice, usage, [DONE]."""
    completion = 0
    try:
        for i in range(answer.job.n):
            yield _chunk(answer, [ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        async for event in answer.results.events(answer.deadline, answer.job.cancel):
            if isinstance(event, TextEvent):
                yield _chunk(answer, [ChunkChoice(index=event.choice, delta=Delta(content=event.delta))])
            else:
                completion += len(event.token_ids)
                yield _chunk(answer, [ChunkChoice(index=event.choice, delta=Delta(), finish_reason=event.reason)])
        if include_usage:
            yield _chunk(answer, [], answer.usage(completion))
    except APIError as error:
        # Headers are sent already: the error travels as an event, as OpenAI-compatible servers do.
        yield sse(error.body())
    finally:
        answer.job.cancel()  # the client went away or the stream ended: stop generating for it
    yield sse("[DONE]")
