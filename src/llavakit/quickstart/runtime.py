"""Where and how the small training loops run: device, CPU threads, seeds, schedule, progress bar."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from llavakit.utils.device import default_device


def pick_device(requested: str | None) -> torch.device:
    if requested is not None:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} was requested but CUDA is not available")
        return device
    return torch.device(default_device())


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block and restore the caller's setting after it."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init draws from it) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cosine_lr(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warmup = max(1, round(total * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A step bar; tqdm's default format shows the rate and the ETA."""
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True, leave=True)


def loss_curve(losses: list[float], points: int = 20) -> list[list[float]]:
    """[[step, mean loss over the steps since the previous point], ...]: a small curve for reports."""
    every = max(1, len(losses) // points)
    return [
        [min(end, len(losses)), round(sum(losses[end - every : end]) / len(losses[end - every : end]), 4)]
        for end in range(every, len(losses) + every, every)
        if losses[end - every : end]
    ]
