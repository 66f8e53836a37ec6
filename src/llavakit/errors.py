"""Errors that users see. Each names the sample, file or field at fault and what is allowed."""


class LlavakitError(ValueError):
    """Base class: bad input or configuration, reported before anything is changed."""


class MediaError(LlavakitError):
    """An image or video that cannot be used (missing, unreadable, truncated, empty, too large)."""


class PlaceholderError(LlavakitError):
    """The number of <image>/<video> placeholders does not match the media given."""


class CheckpointError(LlavakitError):
    """A checkpoint with missing, unexpected or mis-shaped weights, or an unknown layout."""
