"""The LLaVA model: vision tower -> projector -> feature packing -> LLM input embeddings.

Attribute names (``vision_tower``, ``multi_modal_projector``, ``language_model``, ``image_newline``)
make our state-dict keys the hub layout that transformers 4.4x and vLLM read, so saving needs no
renaming. Visual vectors enter the token embeddings through one boolean mask over the placeholder
positions, in placeholder order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from llavakit import layout
from llavakit.config import LlavaConfig
from llavakit.errors import PlaceholderError
from llavakit.layout import VisualItem
from llavakit.model import packing
from llavakit.model.feature_cache import FeatureCache
from llavakit.model.projector import Projector

IGNORE_INDEX = -100


@dataclass
class LlavaOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    num_label_tokens: int = 0  # tokens the loss averages over (for exact gradient accumulation)
    cache: object | None = None  # transformers' Cache, when use_cache


def build_vision_tower(config: LlavaConfig) -> nn.Module:
    hf_config = AutoConfig.for_model(**config.vision.hf_config)
    return AutoModel.from_config(hf_config)


def build_language_model(config: LlavaConfig) -> nn.Module:
    hf_config = AutoConfig.for_model(**config.llm.hf_config)
    return AutoModelForCausalLM.from_config(hf_config)


def needs_newline(config: LlavaConfig) -> bool:
    visual = config.visual
    return any(n != "none" for n in (visual.image_newline, visual.multi_image_newline, visual.video_newline))


class LlavaForCausalLM(nn.Module):
    """A vision tower and a causal LM joined by a projector. Build with ``from_config``."""

    def __init__(self, config: LlavaConfig, vision_tower: nn.Module, language_model: nn.Module):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        vision_width = config.vision.hidden_size * config.vision.num_feature_layers
        self.multi_modal_projector = Projector(config.projector, vision_width, config.llm.hidden_size)
        self.language_model = language_model
        if needs_newline(config):
            scale = 1 / math.sqrt(config.llm.hidden_size)
            self.image_newline = nn.Parameter(torch.randn(config.llm.hidden_size) * scale)
        else:
            self.image_newline = None
        self.tokens_per_side = config.tokens_per_side

    @classmethod
    def from_config(cls, config: LlavaConfig) -> LlavaForCausalLM:
        """Random weights everywhere (the tests' and the builder's starting point)."""
        return cls(config, build_vision_tower(config), build_language_model(config))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    # ---- vision ---------------------------------------------------------------------------
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) crops -> (N, T*T, Dv) features of the chosen layer(s), CLS dropped."""
        tower_dtype = next(self.vision_tower.parameters()).dtype
        outputs = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True, return_dict=True)
        layers = self.config.vision.feature_layer
        if isinstance(layers, int):
            features = outputs.hidden_states[layers]
        else:
            features = torch.cat([outputs.hidden_states[i] for i in layers], dim=-1)
        return features[:, 1:] if self.config.vision.cls_token == "drop" else features

    def encode_visual(self, pixel_values: torch.Tensor, items: list[VisualItem]) -> torch.Tensor:
        """All crops of a batch -> the packed vectors of every item, concatenated in item order."""
        expected = sum(item.num_crops for item in items)
        if pixel_values.shape[0] != expected:
            raise PlaceholderError(f"{pixel_values.shape[0]} crops given but the visual items need {expected}")
        features = self.vision_features(pixel_values)
        after = self.config.visual.reduce_position == "after_projector"
        if after:
            features = self.multi_modal_projector(features)
        per_item = torch.split(features, [item.num_crops for item in items])
        packed = [self.pack(item, crops, project=not after) for item, crops in zip(items, per_item)]
        return torch.cat(packed, dim=0)

    def _project_map(self, feature_map: torch.Tensor) -> torch.Tensor:  # (Dv, h, w) -> (H, h, w)
        return self.multi_modal_projector(feature_map.permute(1, 2, 0)).permute(2, 0, 1)

    def pack(self, item: VisualItem, crops: torch.Tensor, project: bool) -> torch.Tensor:
        """One item's crop features (num_crops, T*T, D) -> its (token_count, H) vectors."""
        visual, side, newline = self.config.visual, self.tokens_per_side, self.image_newline
        project_tokens = self.multi_modal_projector if project else (lambda x: x)
        project_map = self._project_map if project else (lambda x: x)
        if item.kind == "anyres":
            base = project_tokens(crops[0])
            grid_map = project_map(packing.anyres_map(crops[1:], item, visual, side))
            packed = torch.cat((base, packing.map_tokens(grid_map, newline, item.newline)), dim=0)
        elif item.kind == "single":
            packed = packing.append_newline(project_tokens(crops[0]), newline, item.newline)
        else:
            maps = packing.frame_maps(crops, visual, side)
            maps = torch.stack([project_map(m) for m in maps]) if project else maps
            packed = self._video_tokens(maps, item.newline)
        expected = layout.token_count(item, visual, side)
        assert packed.shape[0] == expected, f"packed {packed.shape[0]} vectors, layout says {expected}"
        return packed

    def _video_tokens(self, maps: torch.Tensor, newline_layout: str) -> torch.Tensor:
        """(F, H, p, p) pooled frames -> tokens; newlines per row, per frame, or once at the end."""
        if newline_layout in ("row", "frame"):
            return torch.cat([packing.map_tokens(m, self.image_newline, newline_layout) for m in maps], dim=0)
        tokens = maps.flatten(2, 3).transpose(1, 2).flatten(0, 1)  # (F*p*p, H)
        return packing.append_newline(tokens, self.image_newline, newline_layout)

    # ---- embedding and forward ------------------------------------------------------------
    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids == self.config.image_token_id
        if self.config.video_token_id is not None:
            mask |= input_ids == self.config.video_token_id
        return mask

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, visual_items: list[VisualItem] = (),
        feature_cache: FeatureCache | None = None,
    ) -> torch.Tensor:
        """Token embeddings with visual vectors scattered into the placeholder positions.

        ``feature_cache`` (inference only): items it holds skip the vision tower, the others are
        encoded and stored (``model.feature_cache``)."""
        mask = self.placeholder_mask(input_ids)
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        placeholders = int(mask.sum())
        if not visual_items:
            if placeholders:
                raise PlaceholderError(f"the input has {placeholders} visual placeholder tokens but no images or videos")
            return embeds + self._connector_anchor(embeds) if self.training else embeds
        if feature_cache is None:
            features = self.encode_visual(pixel_values.to(embeds.device), list(visual_items))
        else:
            features = feature_cache.encode(self, pixel_values, visual_items, embeds.device)
        if features.shape[0] != placeholders:
            raise PlaceholderError(
                f"the input has {placeholders} visual placeholder tokens but the images and videos give "
                f"{features.shape[0]} vectors; build inputs with LlavaProcessor so the counts agree"
            )
        return embeds.masked_scatter(mask[..., None], features.to(embeds.dtype))

    def _connector_anchor(self, embeds: torch.Tensor) -> torch.Tensor:
        """Zero that depends on the projector and newline vector.

        A text-only batch never reaches the connector; without this its loss would have no path to
        the trainable parameters of stage-1 (nothing to backpropagate), and under DDP one process
        would wait forever for gradients another never computes.
        """
        width = self.multi_modal_projector.linear_1.in_features
        zero = self.multi_modal_projector(embeds.new_zeros(1, width)).sum() * 0.0
        if self.image_newline is not None:
            zero = zero + self.image_newline.sum() * 0.0
        return zero.to(embeds.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        visual_items: list[VisualItem] = (),
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: object | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        label_weights: torch.Tensor | None = None,
    ) -> LlavaOutput:
        """Logits, and with ``labels`` the mean next-token loss over labelled positions (weighted by
        ``label_weights`` (B, L) when given: sum(w * ce) / sum(w), see ``train.loss_weights``)."""
        embeds = self.embed(input_ids, pixel_values, visual_items)
        outputs = self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
        loss, count = None, 0
        if labels is not None:
            labels = labels.masked_fill(self.placeholder_mask(input_ids), IGNORE_INDEX)
            loss, count = causal_lm_loss(outputs.logits, labels, label_weights)
        return LlavaOutput(outputs.logits, loss, count, outputs.cache if use_cache else None)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions (float32), and how many there were.

    ``weights`` (B, L), aligned with ``labels``, make it the weighted mean sum(w * ce) / sum(w)
    over the labelled positions (all weights 1 give the plain mean)."""
    targets = labels[:, 1:].reshape(-1)
    trained = targets != IGNORE_INDEX
    count = int(trained.sum())
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    if weights is None:
        loss = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="sum") / max(count, 1)
        return loss, count
    per_token = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="none")
    w = weights[:, 1:].reshape(-1).to(device=per_token.device, dtype=per_token.dtype) * trained
    total = w.sum()
    return (per_token * w).sum() / torch.where(total > 0, total, torch.ones_like(total)), count
