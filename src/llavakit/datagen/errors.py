"""Errors of data generation. Each names the file, line or item at fault."""

from __future__ import annotations

from llavakit.errors import LlavakitError


class DatagenError(LlavakitError):
    """Bad input or settings, found before (or instead of) sending requests."""


class EndpointError(DatagenError):
    """The endpoint refuses every request (wrong URL, model or key): stopping beats retrying."""


class ReplyError(ValueError):
    """A reply that cannot become training data; ``reason`` goes to the rejects file."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
