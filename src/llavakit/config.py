"""Typed model configuration, validated once when it is built or loaded.

A LLaVA model is three parts (vision tower, projector, language model) plus the visual
representation: how images, several images and videos become sequences of vectors. Every knob the
seeds ablate (grid pinpoints, the ``anyres_max_N`` threshold, reduction method and position,
newline layouts, frames and pooling) is a field here, never a code edit. Unknown fields and
impossible combinations are errors that say what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llavakit import geometry

PROJECTOR_PATTERN = re.compile(r"^(linear|mlp(\d+)x_gelu)$")
NATIVE_CONFIG_NAME = "llavakit_config.json"

# Vision models whose transformers classes return hidden_states from a patch-embedding ViT.
KNOWN_VISION_TYPES = ("siglip_vision_model", "clip_vision_model", "siglip2_vision_model")
# Full dual-encoder configs whose vision half we take.
DUAL_ENCODER_TYPES = {"siglip": "siglip_vision_model", "clip": "clip_vision_model"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VisionTowerConfig(_Strict):
    """Which vision model, and which of its hidden states become visual tokens."""

    hf_config: dict[str, Any] | None = None  # a transformers vision config (to_dict())
    pretrained: str | None = None  # directory or hub id of a transformers vision model
    feature_layer: int | list[int] = -2  # hidden_states index (or several, concatenated)
    # CLIP prepends a CLS token that LLaVA drops; SigLIP has none. None: decided by the tower type.
    cls_token: Literal["drop", "keep"] | None = None

    @model_validator(mode="after")
    def _has_source(self) -> VisionTowerConfig:
        if self.hf_config is None and self.pretrained is None:
            raise ValueError("vision tower: give hf_config (a transformers vision config) or pretrained (a path)")
        if self.hf_config is not None:
            model_type = self.hf_config.get("model_type")
            if model_type in DUAL_ENCODER_TYPES:
                self.hf_config = {**self.hf_config.get("vision_config", {}), "model_type": DUAL_ENCODER_TYPES[model_type]}
            elif model_type not in KNOWN_VISION_TYPES:
                raise ValueError(
                    f"vision tower model_type {model_type!r} is not supported; choose from "
                    f"{', '.join(KNOWN_VISION_TYPES + tuple(DUAL_ENCODER_TYPES))}"
                )
            has_cls = self.hf_config["model_type"].startswith("clip")
            if self.cls_token is None:
                self.cls_token = "drop" if has_cls else "keep"
            elif has_cls != (self.cls_token == "drop"):
                raise ValueError(
                    f"vision tower {self.hf_config['model_type']}: cls_token={self.cls_token!r} is impossible; "
                    f"this tower {'has' if has_cls else 'has no'} CLS token, so use "
                    f"cls_token={'drop' if has_cls else 'keep'!r} (visual tokens must form a square grid)"
                )
        return self

    @property
    def image_size(self) -> int:
        return int(self.hf_config["image_size"])

    @property
    def patch_size(self) -> int:
        return int(self.hf_config["patch_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config["hidden_size"])

    @property
    def unused_layers(self) -> range:
        """Encoder layers after the deepest feature layer. ``hidden_states[i]`` is what layer ``i - 1``
        gives (``hidden_states[0]``: the embeddings), so these layers' output is never read and their
        parameters never get a gradient."""
        layers = int(self.hf_config["num_hidden_layers"])
        chosen = [self.feature_layer] if isinstance(self.feature_layer, int) else self.feature_layer
        return range(max(i % (layers + 1) for i in chosen), layers)

    @property
    def num_feature_layers(self) -> int:
        return 1 if isinstance(self.feature_layer, int) else len(self.feature_layer)


class ProjectorConfig(_Strict):
    """``linear`` or ``mlp{N}x_gelu``: Linear(vision->H), then N-1 x (GELU, Linear(H->H))."""

    type: str = "mlp2x_gelu"
    bias: bool = True

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        match = PROJECTOR_PATTERN.match(value)
        if not match or (match.group(2) is not None and int(match.group(2)) < 1):
            raise ValueError(f"projector type {value!r} is unknown; choose 'linear' or 'mlp{{N}}x_gelu' with N >= 1")
        return value

    @property
    def depth(self) -> int:
        match = PROJECTOR_PATTERN.match(self.type)
        return 1 if match.group(1) == "linear" else int(match.group(2))


class LLMConfig(_Strict):
    """Any transformers causal language model."""

    hf_config: dict[str, Any] | None = None
    pretrained: str | None = None

    @model_validator(mode="after")
    def _has_source(self) -> LLMConfig:
        if self.hf_config is None and self.pretrained is None:
            raise ValueError("llm: give hf_config (a transformers causal LM config) or pretrained (a path)")
        return self

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config["hidden_size"])


ImageMode = Literal["anyres", "pad_square", "squash", "resize_crop"]
Reduction = Literal["bilinear", "adaptive_avg"]


class VisualConfig(_Strict):
    """How pixels become visual tokens: tiling, reduction, newlines, frames, pooling."""

    crop_size: int = 384  # side of one crop fed to the vision tower
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: Literal["bicubic", "bilinear"] = "bicubic"
    # A single image in a prompt.
    image_mode: ImageMode = "anyres"
    grid_pinpoints: str | list[list[int]] = "(1x1),...,(6x6)"
    max_grids: int | None = 9  # anyres_max_N; None turns thresholding off
    reduce_margin: float = 1.1  # reduce only when the token ratio exceeds this
    reduce_method: Reduction = "bilinear"
    reduce_position: Literal["after_projector", "before_projector"] = "after_projector"
    image_newline: Literal["row", "image", "none"] = "row"
    # Several images in one prompt (Interleave / OneVision: one padded crop each).
    multi_image_mode: ImageMode = "pad_square"
    multi_image_newline: Literal["row", "image", "none"] = "image"
    # Video.
    video_frames: int = Field(32, ge=1)
    video_pool_factor: int = Field(2, ge=1)
    video_pool_method: Reduction = "bilinear"
    video_newline: Literal["video", "frame", "row", "none"] = "video"
    # Safety: refuse decompression bombs before decoding pixels.
    max_image_pixels: int = Field(178_956_970, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> VisualConfig:
        if self.crop_size < 1:
            raise ValueError(f"visual.crop_size must be positive, got {self.crop_size}")
        self.pinpoints()  # raises with a clear message on a bad list
        for field, mode, newline in (
            ("image", self.image_mode, self.image_newline),
            ("multi_image", self.multi_image_mode, self.multi_image_newline),
        ):
            if newline == "row" and mode != "anyres":
                raise ValueError(f"visual.{field}_newline='row' needs {field}_mode='anyres' (got {mode!r})")
        if self.max_grids is not None and self.max_grids < 1:
            raise ValueError(f"visual.max_grids must be >= 1 or null, got {self.max_grids}")
        return self

    def pinpoints(self) -> list[tuple[int, int]]:
        return geometry.parse_grid_pinpoints(self.grid_pinpoints, self.crop_size)


class LlavaConfig(_Strict):
    """The whole model. Saved as ``llavakit_config.json`` beside the weights."""

    vision: VisionTowerConfig
    projector: ProjectorConfig = ProjectorConfig()
    llm: LLMConfig
    visual: VisualConfig = VisualConfig()
    image_token: str = "<image>"
    video_token: str = "<video>"
    image_token_id: int | None = None
    video_token_id: int | None = None
    # Which transformers family an export writes (llava_onevision, llava_next, llava).
    family: Literal["llava_onevision", "llava_next", "llava"] = "llava_onevision"

    @model_validator(mode="after")
    def _tower_matches_crops(self) -> LlavaConfig:
        if self.vision.hf_config is not None and self.vision.image_size != self.visual.crop_size:
            raise ValueError(
                f"visual.crop_size={self.visual.crop_size} but the vision tower takes "
                f"{self.vision.image_size}x{self.vision.image_size} images: they must be equal"
            )
        return self

    @property
    def tokens_per_side(self) -> int:
        return self.vision.image_size // self.vision.patch_size

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / NATIVE_CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LlavaConfig:
        path = Path(path)
        if path.is_dir():
            path = path / NATIVE_CONFIG_NAME
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except ValidationError as err:
            raise ConfigError(f"{path}: invalid llavakit config:\n{err}") from None


class ConfigError(ValueError):
    """A configuration that cannot work, with the reason."""


def validate(data: dict[str, Any], source: str = "config") -> LlavaConfig:
    """Build a LlavaConfig from plain data, turning pydantic's report into one clear error."""
    try:
        return LlavaConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid llavakit config:\n{err}") from None
