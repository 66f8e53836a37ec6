"""Data-centric tools: instruction data from image annotations with a text-only LLM (seed 001),
and re-captioning with a llavakit model (ReCap, seed 003). See docs/datagen.md.

Nothing heavy is imported here: ``datagen instruct`` needs httpx, ``recaption`` torch.
"""

from __future__ import annotations

from llavakit.datagen.annotations import Box, ImageAnnotation, read_annotations
from llavakit.datagen.errors import DatagenError, EndpointError, ReplyError
from llavakit.datagen.prompts import RESPONSE_TYPES, PromptSet, load_prompts
from llavakit.datagen.replies import ReplySettings, parse_reply
from llavakit.datagen.symbolic import symbolic_context

__all__ = [
    "RESPONSE_TYPES", "Box", "DatagenError", "EndpointError", "ImageAnnotation", "PromptSet", "ReplyError",
    "ReplySettings", "load_prompts", "parse_reply", "read_annotations", "symbolic_context",
]
