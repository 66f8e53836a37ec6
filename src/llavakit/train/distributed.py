"""Distributed backends: how the model is wrapped, synchronised, saved and restored.

``AccelerateBackend`` hands everything to accelerate: single process, DDP (gloo on CPU, NCCL on
GPU), and, on GPUs, FSDP or DeepSpeed ZeRO from an accelerate config file (configs/accelerate/).
accelerate only shards on accelerators, so ``CpuFsdpBackend`` applies torch's FSDP2
(``fully_shard``) itself when ``distributed: fsdp`` runs on CPU processes, and checkpoints with
torch.distributed.checkpoint. Both keep the optimizer's parameter groups (per-module learning
rates) as they were built, because FSDP2 keeps the original parameters (as DTensors).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


class AccelerateBackend:
    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any):
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.accelerator.register_for_checkpointing(scheduler)
        return model, optimizer

    def sync_context(self, model: nn.Module, sync: bool):
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def clip(self, model: nn.Module, max_norm: float) -> None:
        self.accelerator.clip_grad_norm_(model.parameters(), max_norm)  # unscales fp16 gradients first

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        return None  # the unwrapped model's own state_dict is complete

    def save_state(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        self.accelerator.save_state(str(directory))

    def load_state(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        self.accelerator.load_state(str(directory))


class CpuFsdpBackend(AccelerateBackend):
    """FSDP2 on CPU processes (gloo): every decoder/encoder layer is its own shard unit."""

    def prepare(self, model: nn.Module, optimizer_factory: Any, scheduler_factory: Any):
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if _is_layer(module):
                fully_shard(module)
        fully_shard(model)
        optimizer = optimizer_factory(model)
        return model, optimizer, scheduler_factory(optimizer)

    def sync_context(self, model: nn.Module, sync: bool):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def clip(self, model: nn.Module, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_state(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))
        if self.accelerator.is_main_process:
            torch.save({"scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, directory / "extra.pt")

    def load_state(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        extra = torch.load(directory / "extra.pt", weights_only=False)
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])


def _is_layer(module: nn.Module) -> bool:
    """Transformer blocks of the LLM and the vision encoder (the usual FSDP wrap units)."""
    name = type(module).__name__
    return name.endswith(("DecoderLayer", "EncoderLayer"))
