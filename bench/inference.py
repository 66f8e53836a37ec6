"""Benchmark: time to first token and decode speed, ours vs transformers ``generate`` (same weights).

Contenders, all greedy on the same prompts (one image each, texts of different lengths, so batches
are left-padded), with the end token disabled so every row decodes exactly ``--new-tokens``:

- ``transformers generate``: ``LlavaOnevisionForConditionalGeneration.generate`` on inputs from
  transformers' processor (the baseline);
- ``ours engine``: ``llavakit.engine.Engine``, the loop under ``Llava.generate``, the chat CLI and the
  server (preallocated KV cache, text streaming included), its decode step not compiled;
- levers (``--levers compile``): ``ours engine, compiled`` compiles the engine's decode step
  (``EngineConfig(compile=True)``; CUDA graphs on a GPU);
- ``--hf-static``: transformers' own fast path, ``generate(cache_implementation="static")``.
  With torchvision importable, the time-to-first-token rows add transformers with its
  torchvision-backed processor (on the model's device).

Every contender's tokens must equal transformers' (``--check strict``; ``report`` only counts the
rows that differ, for bf16 where kernels may round differently). Time to first token is measured
for one 1080p image, preprocessing included (each side with its own processor) and excluded. The
decode step is the median time between consecutive tokens of a run (each loop's own per-step
callback stamps it), so a load spike on a shared machine moves one gap, not the figure.

    python bench/inference.py                                   # CPU: quickstart shape, batch 1/16/64
    python bench/inference.py --shape 0.5b --levers compile --hf-static   # GPU: batch 1/16/64, bf16
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import models
from preprocess import photo

PROMPTS = ["What is shown?", "Describe the picture in detail, please.", "How many objects are there? Answer briefly.",
           "Is the largest shape on the left or on the right side of the image, and what colour is it?"]


# ---- prompts ----------------------------------------------------------------------------------------
def conversations(batch: int, image_size: tuple[int, int], seed: int = 0) -> list[list[dict]]:
    images = [photo(seed + i, image_size) for i in range(min(batch, 4))]  # 4 distinct images, reused
    return [[{"role": "user", "content": [{"type": "image", "image": images[i % len(images)]},
                                          {"type": "text", "text": PROMPTS[i % len(PROMPTS)]}]}]
            for i in range(batch)]


class Prompts:
    """One batch of conversations, prepared by both processors (identical token ids checked)."""

    def __init__(self, pair: models.Pair, convs: list[list[dict]]):
        self.pair, self.convs = pair, convs
        self.ours = self.prepare_ours()
        self.hf = self.prepare_hf()
        if self.ours.input_ids.tolist() != self.hf["input_ids"].tolist():
            raise AssertionError("our processor and transformers' give different input ids")

    def prepare_ours(self):
        return self.pair.ours.prepare(self.convs).to(self.pair.device, self.pair.dtype)

    def prepare_each(self):
        """One prepared prompt per conversation: what the engine takes."""
        return [self.pair.ours.prepare([conv]).to(self.pair.device, self.pair.dtype) for conv in self.convs]

    def prepare_hf(self, processor=None, **kwargs):
        texts, images = [], []
        for conv in self.convs:
            text, media = self.pair.ours.processor.render(conv)  # the tokenizer's chat template
            texts.append(text)
            images.append([m.source for m in media])
        batch = (processor or self.pair.hf_processor)(text=texts, images=images, return_tensors="pt", padding=True,
                                                      padding_side="left", **kwargs)
        batch = batch.to(self.pair.device)
        batch["pixel_values"] = batch["pixel_values"].to(self.pair.dtype)
        return batch


# ---- the contenders -----------------------------------------------------------------------------------
# Each takes (inputs, new_tokens, clock) and returns the new tokens per row; ``clock`` gets a
# time stamp when each token of row 0 is known (every loop syncs with the device once per step to
# test for the end token, so a stamp is the time the token exists).
def stamp(clock: list[float] | None) -> None:
    if clock is not None:
        clock.append(time.perf_counter())


def hf_generate(pair: models.Pair, hf_inputs, new_tokens: int, clock: list[float] | None = None) -> list[list[int]]:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamp(clock)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    with torch.no_grad():
        out = pair.hf.generate(**hf_inputs, max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=pair.tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([Clock()]))
    return out[:, hf_inputs["input_ids"].shape[1]:].tolist()


class EngineRunner:
    """Our engine, driven step by step so that each step can be stamped (one token per row per step)."""

    def __init__(self, pair: models.Pair, compile_step: bool):
        from llavakit.engine import Engine, EngineConfig

        self.pair = pair
        self.engine = Engine(pair.ours, EngineConfig(max_rows=64, max_prefill_tokens=1 << 20, compile=compile_step))

    def __call__(self, prompts: list, new_tokens: int, clock: list[float] | None = None) -> list[list[int]]:
        from llavakit.api import Collected
        from llavakit.engine import Request, SamplingSettings

        listeners = [Collected() for _ in prompts]
        requests = [Request(inputs, SamplingSettings(new_tokens), listener, ignore_eos=True)
                    for inputs, listener in zip(prompts, listeners)]
        for request in requests:
            self.engine.submit(request)
        while not all(request.finished.is_set() for request in requests):
            self.engine.step()  # prefill then one decode step; later steps: one decode step
            common.cuda_sync()
            stamp(clock)
        return [listener.generation(0, 0).token_ids for listener in listeners]


def hf_static_generate(pair: models.Pair, hf_inputs, new_tokens: int, clock: list[float] | None = None):
    """transformers' own fast path: ``generate(cache_implementation="static")`` (it compiles the step)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamp(clock)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    with torch.no_grad():
        out = pair.hf.generate(**hf_inputs, max_new_tokens=new_tokens, do_sample=False, cache_implementation="static",
                               pad_token_id=pair.tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([Clock()]))
    return out[:, hf_inputs["input_ids"].shape[1]:].tolist()


# ---- measuring ---------------------------------------------------------------------------------------
def compare(name: str, got: list[list[int]], expected: list[list[int]], check: str) -> int:
    differing = sum(g != e for g, e in zip(got, expected))
    if differing and check == "strict":
        first = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
        raise AssertionError(f"{name}: {differing} of {len(got)} rows differ from transformers' tokens "
                             f"(row {first}: {got[first][:12]} vs {expected[first][:12]})")
    return differing


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


@dataclass
class Run:
    first_s: float  # call to first token (prefill + one step)
    step_s: float  # median time between consecutive tokens
    total_s: float


def timed(fn: Callable, new_tokens: int) -> tuple[Run, list[list[int]]]:
    clock: list[float] = []
    common.cuda_sync()
    start = time.perf_counter()
    tokens = fn(new_tokens, clock)
    common.cuda_sync()
    end = time.perf_counter()
    gaps = [b - a for a, b in itertools.pairwise(clock)]
    return Run(clock[0] - start, statistics.median(gaps) if gaps else float("nan"), end - start), tokens


def decode_rows(pair: models.Pair, batch: int, args, engine: EngineRunner,
                levers: dict[str, Callable]) -> list[dict[str, Any]]:
    prompts = Prompts(pair, conversations(batch, args.image_size, seed=batch))
    each = prompts.prepare_each()
    contenders: dict[str, Callable] = {
        "transformers generate": lambda n, clock: hf_generate(pair, prompts.hf, n, clock),
        "ours engine": lambda n, clock: engine(each, n, clock),
    }
    if args.hf_static:
        contenders["transformers generate, static cache"] = lambda n, clock: hf_static_generate(pair, prompts.hf, n,
                                                                                                clock)
    contenders |= {name: (lambda n, clock, fn=fn: fn(each, n, clock)) for name, fn in levers.items()}
    expected = contenders["transformers generate"](args.new_tokens, None)
    differing, memory, failed = {}, {}, {}
    for name, fn in list(contenders.items()):  # also the warm-up (and compilation) of every contender
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            tokens = fn(args.new_tokens, None)
        except Exception as err:
            if name in ("transformers generate", "ours engine"):
                raise
            failed[name] = f"{type(err).__name__}: {err}"[:300]
            del contenders[name]
            continue
        differing[name] = compare(name, tokens, expected, args.check)
        memory[name] = peak_memory_gib()
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved: a load spike hits every contender
        for name, fn in contenders.items():
            run, tokens = timed(fn, args.new_tokens)
            runs[name].append(run)
            differing[name] = max(differing[name], compare(name, tokens, expected, args.check))
    prompt_tokens = int(prompts.ours.attention_mask.sum(-1).float().mean())
    pick = min if args.stat == "best" else statistics.median
    base = None
    rows = []
    for name in contenders:
        step = pick(r.step_s for r in runs[name])
        first = pick(r.first_s for r in runs[name])
        base = base or {"step": step, "first": first}
        rows.append({
            "batch": batch, "contender": name, "prompt tokens": prompt_tokens, "first token s": first,
            "first vs generate": base["first"] / first, "decode ms/step": step * 1000, "decode tok/s": batch / step,
            "decode vs generate": base["step"] / step,
            "end-to-end tok/s": batch * args.new_tokens / pick(r.total_s for r in runs[name]),
            "rows differing": differing[name], "peak GiB": memory[name],
            "runs": [vars(r) for r in runs[name]],
        })
    rows += [{"batch": batch, "contender": name, "note": f"failed: {error}"} for name, error in failed.items()]
    return rows


def ttft_rows(pair: models.Pair, args) -> list[dict[str, Any]]:
    """One image at ``--ttft-image``: prompt to first token, with and without preprocessing."""
    from llavakit.engine import SamplingSettings

    prompts = Prompts(pair, conversations(1, args.ttft_image, seed=100))
    ready = prompts.prepare_each()
    contenders = {
        "transformers generate": lambda: hf_generate(pair, prompts.prepare_hf(), 1),
        "ours generate": lambda: [g.token_ids for g in pair.ours.generate(prompts.convs, max_new_tokens=1)],
        "transformers generate, inputs ready": lambda: hf_generate(pair, prompts.hf, 1),
        "ours generate, inputs ready": lambda: [g.token_ids for g in pair.ours.generate_many(ready, SamplingSettings(1))],
    }
    got, expected = contenders["ours generate"](), contenders["transformers generate"]()
    if got != expected and args.check == "strict":
        raise AssertionError(f"first tokens differ: {got} vs {expected}")
    notes = {}
    fast = models.torchvision_processor(pair)  # transformers' fastest processor, when torchvision is there
    if fast is not None:
        name = "transformers generate, torchvision processor"
        try:
            contenders[name] = lambda: hf_generate(pair, prompts.prepare_hf(fast, device=str(pair.device)), 1)
            contenders[name]()
        except Exception as err:  # noqa: BLE001 - reported, not fatal
            notes[name] = f"failed: {type(err).__name__}: {err}"[:300]
            del contenders[name]
    timings = common.interleaved(contenders, 0, args.repeats)
    value = lambda t: t.best if args.stat == "best" else t.median
    rows = []
    for name, timing in timings.items():
        baseline = timings["transformers generate" + (", inputs ready" if "ready" in name else "")]
        rows.append({"batch": 1, "contender": f"TTFT {name}", "prompt tokens": int(prompts.ours.attention_mask.sum()),
                     "first token s": value(timing), "first vs generate": value(baseline) / value(timing),
                     "runs": timing.as_dict()})
    rows += [{"batch": 1, "contender": f"TTFT {name}", "note": note} for name, note in notes.items()]
    return rows


def size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=models.SHAPES, default="quickstart")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on a GPU")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 32 on CPU, 128 on a GPU")
    parser.add_argument("--image-size", type=size, default=None, help="HxW of the decode prompts' images "
                        "(default: 96x128 on CPU, 480x640 on a GPU)")
    parser.add_argument("--ttft-image", type=size, default=(1080, 1920))
    parser.add_argument("--levers", default="", help="comma list: compile (static: accepted, the engine always preallocates its cache)")
    parser.add_argument("--hf-static", action="store_true",
                        help="also time transformers' generate(cache_implementation='static'), its own fast path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stat", choices=["best", "median"], default=None,
                        help="over repeats; default: best on CPU (shared, noisy), median on a GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default on CPU: 1, see common.set_threads)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation for both models")
    parser.add_argument("--check", choices=["strict", "report"], default=None,
                        help="default: strict in float32, report in bfloat16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.new_tokens = args.new_tokens or (128 if gpu else 32)
    args.image_size = args.image_size or ((480, 640) if gpu else (96, 128))
    args.stat = args.stat or ("median" if gpu else "best")
    args.check = args.check or ("strict" if args.dtype == "float32" else "report")
    common.set_threads(args.threads, args.device)

    pair = models.build_pair(args.shape, args.device, getattr(torch, args.dtype), attn=args.attn)
    pair.hf.generation_config.eos_token_id = None  # every row decodes exactly --new-tokens
    wanted = {lever.strip() for lever in args.levers.split(",") if lever.strip()}
    # "static" named the preallocated-cache prototype; the engine always preallocates now (kept so that
    # recorded commands still run)
    unknown = wanted - {"compile", "static"}
    if unknown:
        parser.error(f"unknown levers: {', '.join(sorted(unknown))} (known: compile)")
    engine = EngineRunner(pair, compile_step=False)
    levers: dict[str, Callable] = {}
    if "compile" in wanted:
        levers["ours engine, compiled"] = EngineRunner(pair, compile_step=True)

    rows = ttft_rows(pair, args)
    for batch in [int(b) for b in args.batches.split(",")]:
        rows += decode_rows(pair, batch, args, engine, levers)
    env = common.environment()
    columns = ["batch", "contender", "prompt tokens", "first token s", "first vs generate", "decode ms/step",
               "decode tok/s", "decode vs generate", "end-to-end tok/s", "rows differing", "peak GiB", "note"]
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()} | pair.describe()
    common.report(f"inference-{args.shape}", env, rows, columns, args.out, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
