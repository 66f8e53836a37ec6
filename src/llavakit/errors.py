"""Errors that users see. Each names the sample, file or field at fault and what is allowed."""


class LlavakitError(ValueError):
    """Base class: bad input or configuration, reported before anything is changed."""


class MediaError(LlavakitError):
    """An image or video that cannot be used (missing, unreadable, truncated, empty, too large)."""


class PlaceholderError(LlavakitError):
    """The number of <image>/<video> placeholders does not match the media given."""


class CheckpointError(LlavakitError):
    """A checkpoint with missing, unexpected or mis-shaped weights, or an unknown layout."""


def validation_summary(error) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: reason`` for each error, ``; `` between.

    Users see the field they wrote and why it cannot be, not pydantic's multi-line report with its
    error types and documentation links."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        cause = item.get("ctx", {}).get("error") if item["type"] == "value_error" else None
        parts.append(f"{where}: {cause if cause is not None else item['msg']}")
    return "; ".join(parts)
