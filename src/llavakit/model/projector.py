"""The projector: vision features -> LLM embedding space."""

from __future__ import annotations

import torch
from torch import nn

from llavakit.config import ProjectorConfig


class Projector(nn.Module):
    """``linear`` or ``mlp{N}x_gelu``. Layers are named linear_1..linear_N, as in transformers."""

    def __init__(self, config: ProjectorConfig, in_features: int, out_features: int):
        super().__init__()
        self.depth = config.depth
        self.linear_1 = nn.Linear(in_features, out_features, bias=config.bias)
        for index in range(2, self.depth + 1):
            setattr(self, f"linear_{index}", nn.Linear(out_features, out_features, bias=config.bias))
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (..., Dv) -> (..., H)
        hidden = self.linear_1(features)
        for index in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{index}")(self.act(hidden))
        return hidden
