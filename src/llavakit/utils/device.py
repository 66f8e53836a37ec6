"""The device a command runs on when none is given: the GPU when there is one, else the CPU."""

from __future__ import annotations


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
