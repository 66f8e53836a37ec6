"""An async client for any OpenAI-compatible ``/chat/completions`` endpoint, with retries and a budget.

Retried with exponential back-off (full jitter, ``Retry-After`` honoured): HTTP 408, 409, 429, 5xx,
timeouts, connection errors and bodies that are not a chat completion. 401, 403 and 404 stop the
run (the URL, model or key is wrong: every request would fail). Any other 4xx refuses the one
request (e.g. a context that is too long): that is the item's answer, not worth retrying.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx

from llavakit.datagen.errors import EndpointError

RETRY_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = frozenset({401, 403, 404})


@dataclass(frozen=True)
class EndpointSettings:
    base_url: str  # up to and including /v1, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout_s: float = 120.0  # per attempt

    def sampling(self) -> dict:
        """The request fields that decide the reply (part of each item's digest)."""
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 6
    backoff_s: float = 1.0  # the first wait; doubles each attempt
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class ChatResult:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    seconds: float


@dataclass(frozen=True)
class Refused:
    """The endpoint refused this request for good (a 4xx other than the retried and fatal ones)."""

    status: int
    message: str
    attempts: int
    seconds: float


@dataclass(frozen=True)
class Failed:
    """Every attempt failed transiently, or the budget ran out: the item stays unfinished."""

    reason: str
    attempts: int
    budget: bool = False  # stopped by the budget, not by the endpoint


@dataclass
class Usage:
    """Requests and tokens spent, for accounting and for the budget."""

    attempts: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    missing_usage: int = 0  # successful replies that carried no "usage"
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "429", "timeout", ...

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def count(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


@dataclass
class Budget:
    """Stops sending once ``max_requests`` attempts (retries included) or ``max_tokens`` are spent."""

    usage: Usage
    max_requests: int | None = None
    max_tokens: int | None = None

    @property
    def exhausted(self) -> bool:
        return (self.max_requests is not None and self.usage.attempts >= self.max_requests) or (
            self.max_tokens is not None and self.usage.total_tokens >= self.max_tokens)


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class ChatClient:
    def __init__(self, endpoint: EndpointSettings, retry: RetrySettings, budget: Budget, concurrency: int):
        self.endpoint, self.retry, self.budget = endpoint, retry, budget
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self._url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(endpoint.timeout_s),
                                       limits=httpx.Limits(max_connections=concurrency))
        self._jitter = random.Random()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(self, messages: list[dict]) -> ChatResult | Refused | Failed:
        body = {**self.endpoint.sampling(), "messages": messages}
        start, attempt, reason = time.monotonic(), 0, ""
        while attempt < self.retry.max_attempts:
            if self.budget.exhausted:
                return Failed(f"request budget spent ({reason or 'before the first attempt'})", attempt, budget=True)
            attempt += 1
            self.budget.usage.attempts += 1
            self.budget.usage.retries += attempt > 1
            try:
                return await self._attempt(body, attempt, start)
            except _Retry as retry:
                reason = retry.reason
                if attempt < self.retry.max_attempts:
                    await asyncio.sleep(self._backoff(attempt, retry.retry_after))
        return Failed(f"{attempt} attempts failed, the last with {reason}", attempt)

    async def _attempt(self, body: dict, attempt: int, start: float) -> ChatResult | Refused:
        usage = self.budget.usage
        try:
            response = await self._http.post(self._url, json=body)
        except httpx.TimeoutException:
            usage.count("timeout")
            raise _Retry(f"a timeout after {self.endpoint.timeout_s:g} s") from None
        except httpx.TransportError as err:
            usage.count("connection")
            raise _Retry(f"a connection error ({type(err).__name__}: {err})") from None
        usage.count(str(response.status_code))
        status = response.status_code
        if status in FATAL_STATUS:
            raise EndpointError(f"{self._url}: HTTP {status} ({_message(response)}); check the URL, model name "
                                f"{self.endpoint.model!r} and API key")
        if status in RETRY_STATUS or status >= 500:
            raise _Retry(f"HTTP {status} ({_message(response)})", _retry_after(response))
        if status >= 400:
            return Refused(status, _message(response), attempt, time.monotonic() - start)
        return self._result(response, attempt, start)

    def _result(self, response: httpx.Response, attempt: int, start: float) -> ChatResult:
        try:
            doc = response.json()
            choice = doc["choices"][0]
            text = choice["message"].get("content")
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retry(f"HTTP {response.status_code} with a body that is not a chat completion: "
                         f"{response.text[:120]!r}") from None
        if text is not None and not isinstance(text, str):
            raise _Retry(f"message content is {type(text).__name__}, not text")
        prompt, completion = _tokens(doc.get("usage"))
        self.budget.usage.prompt_tokens += prompt or 0
        self.budget.usage.completion_tokens += completion or 0
        self.budget.usage.missing_usage += prompt is None
        return ChatResult(text, finish, prompt or 0, completion or 0, attempt, time.monotonic() - start)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (attempt - 1))
        wait = ceiling * (0.5 + 0.5 * self._jitter.random())
        return min(self.retry.max_backoff_s, max(wait, retry_after or 0.0))


def _tokens(usage) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a reply's "usage", or (None, None) when it has none we can read."""
    try:
        return int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None, None


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None
