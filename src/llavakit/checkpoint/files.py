"""Reading a checkpoint's files: JSON configs and weights, every failure a CheckpointError naming the file.

The parsers' own errors (``json``, safetensors, ``torch.load``) do not say which file they were
reading; a checkpoint has a dozen files, so each reader here adds the path.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llavakit.errors import CheckpointError


def read_json(path: str | Path) -> Any:
    """The content of a JSON file; a file that cannot be read or is not UTF-8 JSON is a CheckpointError."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a config, an index)."""
    content = read_json(path)
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(content).__name__}, not an object")
    return content


def safetensors_keys(path: str | Path) -> list[str]:
    """Tensor names from a safetensors header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(err)})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(err)})") from None


def read_torch_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model*.bin`` state dict, tensors only (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
