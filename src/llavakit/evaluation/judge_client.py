"""The judge of LLM-as-judge scoring, reached through any OpenAI-compatible chat-completions endpoint.

Retries with exponential back-off on what may pass (HTTP 408, 409, 429 and 5xx, connection errors,
time-outs, a body that is not a chat completion), honouring ``Retry-After``. A request the endpoint
refuses for good (another 4xx) is a failed judgement, reported with its error; 401, 403 and 404 mean
the settings are wrong and stop the run (`JudgeConfigError`). Uses only the standard library.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from llavakit.errors import LlavakitError

ENV_URL, ENV_MODEL, ENV_KEY = "LLAVAKIT_JUDGE_URL", "LLAVAKIT_JUDGE_MODEL", "LLAVAKIT_JUDGE_API_KEY"
RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401, 403, 404}


class JudgeConfigError(LlavakitError):
    """The judge cannot be used at all: settings missing, or the endpoint refuses the URL, model or key."""


@dataclass(frozen=True)
class JudgeSettings:
    url: str  # base URL (http://host:port/v1) or the full .../chat/completions URL
    model: str
    api_key: str | None = None
    max_retries: int = 5  # retries after the first attempt
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    max_backoff: float = 30.0
    timeout: float = 120.0  # seconds per request
    workers: int = 4  # requests in flight at once

    @classmethod
    def resolve(cls, url: str | None = None, model: str | None = None, api_key: str | None = None,
                environ: Mapping[str, str] | None = None, **options) -> JudgeSettings:
        """Flags first, then ``LLAVAKIT_JUDGE_URL`` / ``LLAVAKIT_JUDGE_MODEL`` / ``LLAVAKIT_JUDGE_API_KEY``,
        then ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``."""
        environ = os.environ if environ is None else environ
        url = url or environ.get(ENV_URL) or environ.get("OPENAI_BASE_URL")
        model = model or environ.get(ENV_MODEL)
        api_key = api_key or environ.get(ENV_KEY) or environ.get("OPENAI_API_KEY")
        missing = [name for name, value in (("--judge-url / " + ENV_URL, url), ("--judge-model / " + ENV_MODEL, model))
                   if not value]
        if missing:
            raise JudgeConfigError(f"the LLM judge needs {' and '.join(missing)}")
        return cls(url=url, model=model, api_key=api_key, **options)

    @property
    def endpoint(self) -> str:
        """``.../v1`` -> ``.../v1/chat/completions``; a bare host gets ``/v1/chat/completions``."""
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if urllib.parse.urlparse(url).path else "/v1/chat/completions")


@dataclass(frozen=True)
class JudgeReply:
    """What one judgement request came to: the reply text, or the error after the last attempt."""

    text: str | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


class _Retry(Exception):
    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class _Fail(Exception):
    pass


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own back-off


def _reply_text(body: bytes) -> str:
    try:
        payload = json.loads(body)
        content = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Retry(f"not a chat completion: {body[:200]!r}") from None
    if not isinstance(content, str):
        raise _Retry(f"the reply's content is {type(content).__name__}, not text")
    return content


class JudgeClient:
    """Sends chat requests to the judge; safe to call from several threads."""

    def __init__(self, settings: JudgeSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.sleep = sleep

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        request = urllib.request.Request(self.settings.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                return _reply_text(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            message = f"HTTP {err.code}: {detail}"
            if err.code in FATAL_STATUS:
                raise JudgeConfigError(f"the judge at {self.settings.endpoint} refused the request ({message}); "
                                       f"check the URL, --judge-model and the API key") from None
            if err.code in RETRYABLE_STATUS or err.code >= 500:
                raise _Retry(message, _retry_after(err.headers)) from None
            raise _Fail(message) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            raise _Retry(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None

    def chat(self, messages: Sequence[dict], temperature: float = 0.0, max_tokens: int = 1024) -> JudgeReply:
        """One judgement: retried with back-off, never raising except for `JudgeConfigError`."""
        body = {"model": self.settings.model, "messages": list(messages), "temperature": temperature,
                "max_tokens": max_tokens}
        attempts, error = 0, None
        for retry in range(self.settings.max_retries + 1):
            attempts += 1
            try:
                return JudgeReply(self._post(body), attempts)
            except _Fail as err:
                return JudgeReply(None, attempts, str(err))
            except _Retry as err:
                error = str(err)
                if retry == self.settings.max_retries:
                    break
                wait = min(self.settings.max_backoff, self.settings.backoff * 2**retry)
                self.sleep(min(self.settings.max_backoff, err.wait) if err.wait is not None else wait)
        return JudgeReply(None, attempts, f"gave up after {attempts} attempts: {error}")
