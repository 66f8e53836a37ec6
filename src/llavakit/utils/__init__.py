"""Small shared helpers with no heavy imports."""

import dataclasses
from typing import Any

DESCRIPTION = "description"  # the dataclass field metadata key the config reference reads


def described(default: Any, description: str) -> Any:
    """A dataclass field with its default and the description the config reference shows (the
    recipe schema's sections built from settings dataclasses carry it as ``Field(description=)``)."""
    return dataclasses.field(default=default, metadata={DESCRIPTION: description})
