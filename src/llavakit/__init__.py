"""llavakit: build, train, evaluate and serve LLaVA-family multimodal models."""

from llavakit.api import Generation, Llava, load
from llavakit.config import LlavaConfig

__version__ = "0.1.0"
__all__ = ["Generation", "Llava", "LlavaConfig", "load", "__version__"]
