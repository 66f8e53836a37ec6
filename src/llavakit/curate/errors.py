"""The one error type of the curation package."""

from llavakit.errors import LlavakitError


class CurationError(LlavakitError):
    """Bad curation input or state; the message names the file (and line) at fault."""
