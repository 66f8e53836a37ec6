"""Shared by the benchmarks: where and when a figure was taken, timing, tables, JSON, MFU.

Every benchmark prints a table and writes JSON with ``environment()`` (device, threads, load,
date, git revision, library versions) so a figure never travels without its context.

MFU counts *model* FLOPs (what the model needs, not what the kernels did: recomputation under
activation checkpointing is not counted) divided by the device's dense peak. A component counts
3x its forward FLOPs when its weights train (forward, input gradients, weight gradients), 2x when
frozen but gradients flow through it to something trainable upstream (forward and input gradients),
and 1x when frozen with nothing trainable upstream (forward only).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "runs" / "bench"

# Dense (no sparsity) peak TFLOPS by device-name fragment, most specific first: bf16/fp16 tensor cores.
PEAK_TFLOPS_BF16 = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L4", 121.0), ("A10G", 125.0), ("RTX 4090", 165.2), ("V100", 125.0),
]
TRAINED, FROZEN_GRAD, FROZEN = "trained", "frozen_grad", "frozen"
MULTIPLIER = {TRAINED: 3, FROZEN_GRAD: 2, FROZEN: 1}


# ---- where and when -----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """Short HEAD, with ``+dirty`` when the working tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD") or "unknown"
        return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {n: _version(n) for n in ("torch", "transformers", "pillow", "numpy", "torchvision", "torchao")},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                      "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
                      "cuda": torch.version.cuda}
    env["device"] = device_label(env)
    return env


def device_label(env: dict[str, Any]) -> str:
    if "gpu" in env:
        return f"{env['gpu']['name']} (x{env['gpu']['count']})"
    return f"CPU {env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} torch threads"


def set_threads(threads: int | None, device: str) -> None:
    """Intra-op threads: ``threads`` if given, else 1 on a CPU (on a shared machine, an op whose
    threads wait for a descheduled sibling stalls: we measured 12x slower training steps with 2
    threads than with 1 on 2 busy cores), else torch's default."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    elif not str(device).startswith("cuda"):
        torch.set_num_threads(1)


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """Dense bf16 peak of a GPU by name; None (no MFU) on a CPU or an unknown device."""
    if override:
        return override
    for fragment, tflops in PEAK_TFLOPS_BF16:
        if fragment in device_name:
            return tflops
    return None


# ---- timing -----------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "best_s": self.best, "runs_s": [round(s, 6) for s in self.seconds]}


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3, sync: Callable[[], None] = cuda_sync) -> Timing:
    """Wall-clock seconds of ``fn`` after ``warmup`` untimed calls; the device is synced around each call."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        timing.seconds.append(time.perf_counter() - start)
    return timing


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 1, repeats: int = 3,
                sync: Callable[[], None] = cuda_sync) -> dict[str, Timing]:
    """Time several contenders in alternation (A B A B ...), so a load spike on a shared machine hits
    all of them instead of one: the ratios stay meaningful when the absolute figures move."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            timings[name].seconds.append(time.perf_counter() - start)
    return timings


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """ours / baseline for rates (higher is better); None when either is missing."""
    if not ours or not baseline:
        return None
    return ours / baseline


# ---- MFU ----------------------------------------------------------------------------------------
@dataclass
class Component:
    """One part of the model in a training step: its forward FLOPs for the step and how it trains."""

    name: str
    forward_flops: float
    mode: str  # TRAINED | FROZEN_GRAD | FROZEN

    @property
    def step_flops(self) -> float:
        return MULTIPLIER[self.mode] * self.forward_flops


def transformer_forward_flops(matmul_params: int, tokens_per_sequence: int, sequences: int, layers: int,
                              attention_width: int, causal: bool = False) -> float:
    """2 FLOPs per weight per token, plus attention scores and weighted sums: 4 * L * T * d per token
    (PaLM's convention counts the full T x T square; ``causal`` halves it)."""
    tokens = tokens_per_sequence * sequences
    attention = 4 * layers * tokens_per_sequence * attention_width * tokens
    return 2 * matmul_params * tokens + (attention / 2 if causal else attention)


def step_flops(components: Sequence[Component]) -> float:
    return sum(c.step_flops for c in components)


def mfu(components: Sequence[Component], step_seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation of one step, or None without a known peak (``peak`` in TFLOPS)."""
    if not peak or step_seconds <= 0:
        return None
    return step_flops(components) / step_seconds / (peak * 1e12)


def linear_params(module: Any) -> int:
    """Weights that multiply activations (Linear and Conv weights): 2 FLOPs each per use."""
    from torch import nn

    total = 0
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            total += sub.weight.numel()
    return total


# ---- output -------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3g}" if magnitude < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table (it reads in a terminal and pastes into RESULTS.md)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def write_json(path: str | Path, name: str, settings: dict[str, Any], results: Any, env: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": env, "settings": settings, "results": results}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def default_out(name: str) -> Path:
    return DEFAULT_OUT / f"{name}.json"


def report(name: str, env: dict[str, Any], rows: Sequence[dict[str, Any]], columns: Sequence[str] | None,
           out: str | Path | None, settings: dict[str, Any], extra: Any = None) -> Path:
    """Print the header line and the table, write the JSON; returns the JSON path."""
    print(f"\n{name}: {env['device']}, load {env['load_average']}, {env['date']}, git {env['git']}")
    print(table(rows, columns))
    results = {"rows": list(rows)} | ({"extra": extra} if extra is not None else {})
    path = write_json(out or default_out(name), name, settings, results, env)
    print(f"wrote {path}")
    return path
