"""ASGI middleware: the API key and the request body size limit.

Both run before routing and JSON parsing: a client without the key makes the server read nothing,
and an oversized body is refused after reading at most ``max_bytes`` of it, whether or not the
client declared its length.
"""

from __future__ import annotations

import hmac
import json

from llavakit.serving.errors import APIError


async def send_error(send, error: APIError, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer with an OpenAI error object straight from ASGI (before any app code runs)."""
    payload = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            # The buffered body once, then the real channel (which reports disconnects).
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        error = APIError(413, f"the request body is larger than this server accepts ({self.max_bytes} bytes); "
                              "send fewer or smaller images", "request_too_large")
        await send_error(send, error, [(b"connection", b"close")])

class ApiKey:
    """``Authorization: Bearer <key>`` on every path under a prefix, checked before the body is read."""

    def __init__(self, app, key: str | None, prefix: str = "/v1/"):
        self.app = app
        self.key = key.encode() if key else None
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        if self.key is None or scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        scheme, _, token = dict(scope.get("headers", [])).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        error = APIError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'", "invalid_api_key")
        # The body is not read: the connection cannot carry another request after this answer.
        await send_error(send, error, [(b"www-authenticate", b"Bearer"), (b"connection", b"close")])


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(header: bytes) -> str:
    """The host of a Host header without its port: "[::1]:8000" -> "::1", "Example.com:80" -> "example.com"."""
    value = header.decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """Only the allowed names in the ``Host`` header, on every path.

    A server on loopback without an API key trusts whoever can connect; a web page can connect
    through the browser by pointing its own name at 127.0.0.1 (DNS rebinding), but its requests
    then carry that name as their Host. Refusing foreign Host headers closes that door.
    """

    def __init__(self, app, allowed: tuple[str, ...] | None):
        self.app = app
        self.allowed = None if allowed is None else frozenset(h.strip("[]").lower() for h in allowed)

    async def __call__(self, scope, receive, send) -> None:
        if self.allowed is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"host")
        if header is not None and host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        shown = ascii(header.decode("latin-1")) if header is not None else "none"
        error = APIError(400, f"the Host header ({shown}) is not one this server answers to; start it with "
                              "--allowed-hosts to add names", "host_not_allowed")
        await send_error(send, error, [(b"connection", b"close")])  # the body is not read
