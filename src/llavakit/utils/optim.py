"""AdamW with PyTorch's fused kernel wherever the parameters' device has one.

Without ``fused``, AdamW on the CPU updates one tensor at a time in Python, and for the small models
of the quickstart and the tests that loop is a visible share of a step. The fused kernel makes the
same update, within float rounding, in one call. Other devices keep PyTorch's default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)``, fused when every parameter is a floating tensor on
    a device of ``FUSED_DEVICES``."""
    groups = list(params)
    tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.device.type in FUSED_DEVICES and t.is_floating_point() for t in tensors)
    return torch.optim.AdamW(groups, fused=True if fused else None, **kwargs)
