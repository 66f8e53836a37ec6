"""OpenAI-style errors: every refusal is ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A refusal with its HTTP status; raised anywhere in a handler, answered as an error object."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, code, param)


TYPE_TAGS = re.compile(r"^(str|int|float|bool|none|dict|list|[a-z_-]+\[.*\])$")


def _location(loc) -> list[str]:
    """A field path without pydantic's union-member tags ("str", "list[...]") and repeated tags."""
    parts = [str(p) for p in loc if p != "body" and not TYPE_TAGS.match(str(p))]
    # Discriminated unions add the tag to the path ("...content.1.image_url.image_url"): drop repeats.
    return [part for i, part in enumerate(parts) if i == 0 or part != parts[i - 1]]


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """A pydantic / FastAPI validation failure -> 400 naming the most specific offending field."""
    if not errors:
        return invalid("invalid request", None, "invalid_value")
    # Unions report one error per member; the deepest location is the one the client meant.
    first = max(errors, key=lambda e: len(_location(e.get("loc", ()))))
    if first.get("type") == "json_invalid":
        return invalid(f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                       None, "invalid_json")
    param = ".".join(_location(first.get("loc", ()))) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return invalid(f"{param}: {message}" if param else message, param, "invalid_value")
