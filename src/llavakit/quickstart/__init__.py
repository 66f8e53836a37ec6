"""The quickstart: tiny vision and language components trained on the synthetic world, then LLaVA stages.

    from llavakit.quickstart import ComponentSettings, prepare_components
"""

from .components import Components, prepare_components
from .settings import (
    COMPONENTS_VERSION,
    ComponentSettings,
    LanguageSettings,
    VisionSettings,
)

__all__ = [
    "COMPONENTS_VERSION",
    "ComponentSettings",
    "Components",
    "LanguageSettings",
    "VisionSettings",
    "prepare_components",
]
