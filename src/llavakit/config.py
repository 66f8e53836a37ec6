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
from llavakit.errors import LlavakitError, validation_summary

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

    hf_config: dict[str, Any] | None = Field(None, description="a transformers vision config (to_dict()): SigLIP, "
                                                               "SigLIP2 or CLIP")
    pretrained: str | None = Field(None, description="directory or hub id of a transformers vision model")
    feature_layer: int | list[int] = Field(-2, description="hidden_states index whose features become visual "
                                                           "tokens (or several, concatenated)")
    # CLIP prepends a CLS token that LLaVA drops; SigLIP has none. None: decided by the tower type.
    cls_token: Literal["drop", "keep"] | None = Field(
        None, description="drop CLIP's CLS token or keep (towers without one); None: from the tower type")

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

    type: str = Field("mlp2x_gelu", description="linear, or mlp{N}x_gelu: N linear layers with GELU between")
    bias: bool = Field(True, description="linear layers with biases")

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

    hf_config: dict[str, Any] | None = Field(None, description="a transformers causal LM config (to_dict())")
    pretrained: str | None = Field(None, description="directory or hub id of a transformers causal LM")

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

    crop_size: int = Field(384, description="side of one crop fed to the vision tower (its image size)")
    image_mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel normalisation mean")
    image_std: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel normalisation std")
    resample: Literal["bicubic", "bilinear"] = Field("bicubic", description="resampling filter of resizes")
    # A single image in a prompt.
    image_mode: ImageMode = Field("anyres", description="a single image: anyres (a grid of crops plus an "
                                                        "overview), pad_square, squash or resize_crop")
    grid_pinpoints: str | list[list[int]] = Field(
        "(1x1),...,(6x6)", description="the AnyRes grids, in crops, e.g. '(1x1),...,(6x6)', or pixel sizes")
    max_grids: int | None = Field(9, description="anyres_max_N: reduce an image's tokens to N crops' worth "
                                                 "(None: no reduction)")
    reduce_margin: float = Field(1.1, description="reduce only when the token ratio exceeds this")
    reduce_method: Reduction = Field("bilinear", description="how tokens are reduced: bilinear or adaptive_avg")
    reduce_position: Literal["after_projector", "before_projector"] = Field(
        "after_projector", description="reduce the projected tokens or the vision features")
    image_newline: Literal["row", "image", "none"] = Field(
        "row", description="the learned newline vector after every row of tokens, after the image, or none")
    # Several images in one prompt (Interleave / OneVision: one padded crop each).
    multi_image_mode: ImageMode = Field("pad_square", description="each image of a multi-image prompt "
                                                                  "(modes as image_mode)")
    multi_image_newline: Literal["row", "image", "none"] = Field(
        "image", description="newline vectors of each image of a multi-image prompt")
    # Video.
    video_frames: int = Field(32, ge=1, description="frames sampled uniformly from a video")
    video_pool_factor: int = Field(2, ge=1, description="each frame's token grid is pooled by this factor per side")
    video_pool_method: Reduction = Field("bilinear", description="how frames are pooled: bilinear or adaptive_avg")
    video_newline: Literal["video", "frame", "row", "none"] = Field(
        "video", description="newline vectors: after the video, after each frame, after each row, or none")
    # Safety: refuse decompression bombs before decoding pixels.
    max_image_pixels: int = Field(178_956_970, ge=1, description="images with more pixels are refused before "
                                                                 "decoding")

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

    vision: VisionTowerConfig = Field(description="the vision tower")
    projector: ProjectorConfig = Field(ProjectorConfig(), description="the projector from vision features to the "
                                                                      "LLM's embeddings")
    llm: LLMConfig = Field(description="the language model")
    visual: VisualConfig = Field(VisualConfig(), description="how images and videos become visual tokens")
    image_token: str = Field("<image>", description="the image placeholder in prompts")
    video_token: str = Field("<video>", description="the video placeholder in prompts")
    image_token_id: int | None = Field(None, description="the image placeholder's token id (None: from the "
                                                         "tokenizer)")
    video_token_id: int | None = Field(None, description="the video placeholder's token id (None: from the "
                                                         "tokenizer)")
    # Which transformers family an export writes (llava_onevision, llava_next, llava).
    family: Literal["llava_onevision", "llava_next", "llava"] = Field(
        "llava_onevision", description="the transformers family `llavakit export` writes")

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
        from llavakit.checkpoint.files import read_json_object  # here: the config module stays light

        path = Path(path)
        if path.is_dir():
            path = path / NATIVE_CONFIG_NAME
        data = read_json_object(path)  # a CheckpointError names a file that is not JSON
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(f"{path}: invalid llavakit config: {validation_summary(err)}") from None


class ConfigError(LlavakitError):
    """A configuration that cannot work, with the reason."""


def validate(data: dict[str, Any], source: str = "config") -> LlavaConfig:
    """Build a LlavaConfig from plain data, turning pydantic's report into one clear error."""
    try:
        return LlavaConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid llavakit config: {validation_summary(err)}") from None
