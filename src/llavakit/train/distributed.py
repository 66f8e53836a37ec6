"""Distributed backends: how the model is wrapped, synchronised, saved and restored.

``AccelerateBackend`` hands everything to accelerate: single process, DDP (gloo on CPU, NCCL on
GPU), and, on GPUs, FSDP or DeepSpeed ZeRO from an accelerate config file (configs/accelerate/).
accelerate only shards on accelerators, so ``CpuFsdpBackend`` applies torch's FSDP2
(``fully_shard``) itself when ``distributed: fsdp`` runs on CPU processes, and checkpoints with
torch.distributed.checkpoint. Both keep the optimizer's parameter groups (per-module learning
rates) as they were built, because FSDP2 keeps the original parameters (as DTensors).

The engine a launch asks for (an accelerate config's ``distributed_type`` reaches the process as
``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP``; the training config's ``distributed: fsdp``)
is checked against the one that was set up: accelerate falls back to plain DDP (or one process)
without a word where it cannot shard, e.g. on CPU, and a run that silently trains unsharded is not
the run that was asked for. DeepSpeed is refused before accelerate starts where it cannot run.

Resuming reads tensors and JSON only: a checkpoint is data, and a pickle can run code when it is
loaded. The scheduler's state is JSON (``scheduler.json``), RNG states are tensors, and every
pickle accelerate writes is read with ``weights_only=True``; one that is more than tensors and
plain values is refused, never run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llavakit.errors import CheckpointError, LlavakitError
from llavakit.utils.atomic import atomic_write_json

SCHEDULER_FILE = "scheduler.json"


class EngineError(LlavakitError):
    """A launch that asked for an engine (DeepSpeed, FSDP) this process cannot run or did not get."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def requested_engine(distributed: str, environ: Any = os.environ) -> tuple[str, str] | None:
    """(engine, who asked) for a launch that asked for DeepSpeed or FSDP; None for one that did not."""
    if _flag(environ.get("ACCELERATE_USE_DEEPSPEED")):
        return "deepspeed", "the accelerate config (ACCELERATE_USE_DEEPSPEED)"
    if _flag(environ.get("ACCELERATE_USE_FSDP")):
        return "fsdp", "the accelerate config (ACCELERATE_USE_FSDP)"
    if distributed == "fsdp":
        return "fsdp", "the training config (distributed: fsdp)"
    return None


def refuse_unrunnable(request: tuple[str, str] | None, cuda: bool | None = None,
                      deepspeed_installed: bool | None = None) -> None:
    """Before accelerate starts: DeepSpeed needs CUDA GPUs and the deepspeed package."""
    if request is None or request[0] != "deepspeed":
        return
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if deepspeed_installed is None:
        deepspeed_installed = importlib.util.find_spec("deepspeed") is not None
    if not cuda:
        raise EngineError(f"DeepSpeed was asked for by {request[1]} but this machine has no CUDA GPU and DeepSpeed "
                          "runs only on GPUs: launch with configs/accelerate/ddp.yaml, or torchrun with "
                          "`distributed: fsdp` to shard on CPU processes")
    if not deepspeed_installed:
        raise EngineError(f"DeepSpeed was asked for by {request[1]} but the deepspeed package is not installed: "
                          "pip install deepspeed (or launch with configs/accelerate/fsdp.yaml)")


def running_engine(accelerator: Any, cpu_fsdp: bool) -> str:
    """What the process actually runs: deepspeed, fsdp, ddp, or one process."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP or cpu_fsdp:
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "one process"


def check_engine(request: tuple[str, str] | None, running: str) -> None:
    """Refuse to train when the engine set up is not the one the launch asked for."""
    if request is not None and request[0] != running:
        engine, who = request
        hint = ("FSDP on CPU shards only with 2 or more processes (torchrun --nproc_per_node N, "
                "`distributed: fsdp`)" if engine == "fsdp" and not torch.cuda.is_available()
                else "check the launcher and its config")
        raise EngineError(f"{who} asked for {engine} but the launch set up {running}; not training unsharded "
                          f"in its place: {hint}")


class AccelerateBackend:
    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any):
        # The scheduler is saved as JSON here, not registered with accelerate: accelerate reloads
        # registered objects from pickles with weights_only=False.
        return self.accelerator.prepare(model, optimizer)

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
        if self.accelerator.is_main_process:
            save_scheduler(directory, scheduler)

    def load_state(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        from accelerate.utils import load

        # accelerate reads its RNG file with weights_only=True but goes on without the RNG state
        # when that fails: read it first, so a file that is more than tensors is refused.
        rng = directory / f"random_states_{self.accelerator.process_index}.pkl"
        objects = sorted(directory.glob("custom_checkpoint_*.pkl"))  # accelerate would unpickle these freely
        if objects:
            raise CheckpointError(f"{objects[0]}: a pickled object state, which llavakit does not write and resume "
                                  "never loads (a checkpoint of an older llavakit keeps its scheduler there; start "
                                  "that run again)")
        with refusing_pickles(directory):
            load(rng)
            self.accelerator.load_state(str(directory))
        load_scheduler(directory, scheduler)


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
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))
        save_file({"cpu": torch.get_rng_state()}, str(self._rng_file(directory)))
        if self.accelerator.is_main_process:
            save_scheduler(directory, scheduler)

    def load_state(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        load_scheduler(directory, scheduler)
        torch.set_rng_state(load_file(str(self._rng_file(directory)))["cpu"])

    def _rng_file(self, directory: Path) -> Path:
        return directory / f"rng_{self.accelerator.process_index}.safetensors"


def _is_layer(module: nn.Module) -> bool:
    """Transformer blocks of the LLM and the vision encoder (the usual FSDP wrap units)."""
    name = type(module).__name__
    return name.endswith(("DecoderLayer", "EncoderLayer"))


def save_scheduler(directory: Path, scheduler: Any) -> None:
    atomic_write_json(directory / SCHEDULER_FILE, scheduler.state_dict())


def load_scheduler(directory: Path, scheduler: Any) -> None:
    path = directory / SCHEDULER_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {SCHEDULER_FILE}, the scheduler's state")
    scheduler.load_state_dict(json.loads(path.read_text()))


@contextlib.contextmanager
def refusing_pickles(directory: Path):
    """A pickle that ``weights_only=True`` refuses becomes a one-line error naming the checkpoint."""
    try:
        yield
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL \S+|Unsupported operand \S+", str(err))
        raise CheckpointError(f"{directory}: a state file holds more than tensors and plain values, and resume "
                              f"never runs code from a checkpoint; refusing it "
                              f"({found.group(0) if found else type(err).__name__})") from None
