"""Benchmark: training tokens/s, MFU and peak memory, ours vs a plain transformers loop (same samples).

Stage-2-style steps on random weights of a model shape (bench/models.py) and synthetic samples:
one image (sizes drawn from ``--image-sizes``) or none, then text of random length, the answer
half labelled. One optimizer step per micro-batch of ``--batch`` samples.

- ``transformers``: ``LlavaOnevisionForConditionalGeneration(**inputs, labels=...)``, ``loss.backward()``,
  ``torch.optim.AdamW`` (its default implementation): the plain loop.
- ``ours``: ``LlavaForCausalLM`` on our collator's batches, same optimizer.
- ``ours+LEVER`` for each of ``--levers`` (each alone, then ``ours+all`` together):
  ``packing`` (several samples per row, no cross-sample attention), ``group`` (modality-length
  grouping, the Trainer's batch plan), ``fused_ce`` (``llavakit.model.losses``: no full logits),
  ``ckpt`` (activation checkpointing), ``fused_adamw``, ``compile`` (``torch.compile`` of the tower
  and the LLM), ``fp8`` (torchao float8 linear layers in the LLM; Hopper).

``--mode``: ``full`` (everything trains), ``frozen_vision``, ``lora`` (vision frozen, LoRA on the
LLM, projector trained). MFU counts model FLOPs of real tokens (bench/common.py: 3x forward for
trained parts, 2x frozen with gradients through, 1x frozen at the input); padding is not work, so
packing and grouping show up in MFU as well as tokens/s.

    python bench/train.py                                      # CPU: quickstart shape
    python bench/train.py --shape 0.5b --batch 2 --seq 8192 --levers packing,group,fused_ce,ckpt,fused_adamw,compile
    python bench/train.py --shape 7b --mode lora --batch 1 --seq 8192 --levers fused_ce,ckpt,fused_adamw
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import models

LEVERS = ("packing", "group", "fused_ce", "ckpt", "fused_adamw", "compile", "fp8")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- samples -------------------------------------------------------------------------------------------
def make_samples(pair: models.Pair, count: int, args, seed: int) -> list:
    """Encoded samples as the data pipeline makes them (``EncodedSample``), with random crops."""
    from llavakit import layout
    from llavakit.data.dataset import EncodedSample
    from llavakit.model.llava import IGNORE_INDEX

    config = pair.ours.config
    visual, side = config.visual, config.tokens_per_side
    rng = np.random.default_rng(seed)
    text_ids = np.arange(10, len(pair.tokenizer))
    text_ids = text_ids[~np.isin(text_ids, [config.image_token_id, config.video_token_id])]
    samples = []
    for index in range(count):
        items, pixels, visual_tokens = [], None, 0
        if rng.random() < args.image_fraction:
            height, width = args.image_sizes[int(rng.integers(len(args.image_sizes)))]
            item = layout.plan_image(visual, (height, width), False)
            items, visual_tokens = [item], layout.token_count(item, visual, side)
            pixels = rng.uniform(-1, 1, (item.num_crops, 3, visual.crop_size, visual.crop_size)).astype(np.float32)
        room = args.seq - visual_tokens - 4  # 4 template tokens before the image
        low = min(32, room)
        text = int(rng.integers(low, max(low, min(args.text_max, room)) + 1))
        ids = torch.from_numpy(rng.choice(text_ids, 4 + visual_tokens + text))
        ids[4:4 + visual_tokens] = config.image_token_id
        labels = ids.clone()
        labels[:4 + visual_tokens + text // 2] = IGNORE_INDEX  # template, image and question: the answer trains
        samples.append(EncodedSample(index, f"s{index}", "image" if items else "text", ids, labels, items, pixels,
                                     visual_tokens))
    return samples


def visual_tokens(pair: models.Pair, size: tuple[int, int]) -> int:
    from llavakit import layout

    config = pair.ours.config
    return layout.token_count(layout.plan_image(config.visual, size, False), config.visual, config.tokens_per_side)


def micro_batches(samples: list, batch: int, group: bool, seed: int) -> list[list]:
    """The Trainer's plan: shuffled, or grouped by (modality, length) with ``group``."""
    from llavakit.train.plan import BatchPlan

    plan = BatchPlan(tuple(range(len(samples))), tuple(s.length for s in samples),
                     tuple(bool(s.visual_items) for s in samples), batch, batch, 1, seed, group)
    return [[samples[i] for i in plan.micro_batches(step, 0)[0]] for step in range(plan.steps_per_epoch)]


def hf_inputs(batch, dtype: torch.dtype) -> dict[str, Any]:
    """transformers' inputs for a padded batch of ours: images (num_images, max crops, 3, S, S) + sizes."""
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}
    if batch.visual_items:
        crops = torch.split(batch.pixel_values, [item.num_crops for item in batch.visual_items])
        most = max(c.shape[0] for c in crops)
        kwargs["pixel_values"] = torch.stack([torch.cat((c, c.new_zeros(most - c.shape[0], *c.shape[1:])))
                                              for c in crops]).to(dtype)
        kwargs["image_sizes"] = torch.tensor([list(item.media_size) for item in batch.visual_items],
                                             device=batch.input_ids.device)
    return kwargs


# ---- FLOPs ---------------------------------------------------------------------------------------------
def components(pair: models.Pair, samples: list, mode: str, lora_params: int) -> list[common.Component]:
    """Model FLOPs of one pass over ``samples`` (real tokens only), per component and how it trains."""
    model, config = pair.ours.model, pair.ours.config
    vision_cfg, text_cfg = pair.ours.model.vision_tower.config, model.language_model.config
    tokens_per_crop = config.tokens_per_side ** 2
    crops = sum(item.num_crops for s in samples for item in s.visual_items)
    tower = model.vision_tower.vision_model if hasattr(model.vision_tower, "vision_model") else model.vision_tower
    vision_matmul = common.linear_params(tower.encoder) + common.linear_params(tower.embeddings)
    vision = common.transformer_forward_flops(vision_matmul, tokens_per_crop, crops, vision_cfg.num_hidden_layers,
                                              vision_cfg.hidden_size)
    projector = 2 * common.linear_params(model.multi_modal_projector) * tokens_per_crop * crops
    base = model.language_model.get_base_model() if hasattr(model.language_model, "get_base_model") \
        else model.language_model
    llm_matmul = common.linear_params(base) - lora_params
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    heads = text_cfg.num_attention_heads * head_dim
    llm = sum(common.transformer_forward_flops(llm_matmul, s.length, 1, text_cfg.num_hidden_layers, heads)
              for s in samples)
    tokens = sum(s.length for s in samples)
    parts = [
        common.Component("vision tower", vision, common.TRAINED if mode == "full" else common.FROZEN),
        common.Component("projector", projector, common.TRAINED),
        common.Component("llm", llm, common.FROZEN_GRAD if mode == "lora" else common.TRAINED),
    ]
    if lora_params:
        parts.append(common.Component("lora adapters", 2 * lora_params * tokens, common.TRAINED))
    return parts


# ---- trainability ----------------------------------------------------------------------------------------
def set_trainable(parts: dict[str, list[torch.nn.Parameter]], mode: str) -> None:
    trains = {"vision": mode == "full", "projector": True, "llm": mode != "lora"}
    for part, params in parts.items():
        for param in params:
            param.requires_grad_(trains[part])


def hf_parts(hf) -> dict[str, list]:
    inner = hf.model
    return {"vision": [p for n, p in inner.vision_tower.named_parameters() if "head" not in n
                       and "post_layernorm" not in n],
            "projector": [*inner.multi_modal_projector.parameters(), inner.image_newline],
            "llm": [*inner.language_model.parameters(), *hf.lm_head.parameters()]}


def ours_parts(model) -> dict[str, list]:
    return {"vision": [p for n, p in model.vision_tower.named_parameters() if "head" not in n
                       and "post_layernorm" not in n],
            "projector": [*model.multi_modal_projector.parameters(), model.image_newline],
            "llm": list(model.language_model.parameters())}


def frozen_unused(model_vision) -> None:
    for name, param in model_vision.named_parameters():  # LLaVA never reads the tower's head
        if "head" in name or "post_layernorm" in name:
            param.requires_grad_(False)


def add_lora(module, rank: int, regex: str | None = None) -> int:
    """LoRA adapters in place on the LLM's linear layers; returns the adapters' parameter count."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none",
                        target_modules=regex if regex else LORA_TARGETS)
    inject_adapter_in_model(config, module)
    count = 0
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
            count += param.numel()
    return count


# ---- one contender --------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    step_s: list[float]
    tokens: int
    padded_tokens: int
    flops: float
    peak_gib: float | None
    first_loss: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.tokens / sum(self.step_s) if self.tokens else 0.0


def autocast(args) -> contextlib.AbstractContextManager:
    """``--amp``: float32 weights, bf16 autocast (what the Trainer does through accelerate)."""
    if not args.amp:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if args.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def optimizer(params: list, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-5, fused=True if fused else None)


def run_steps(name: str, step: Callable[[Any], float], batches: list, warmup: int, flops: float) -> Result:
    for batch in batches[:warmup]:
        step(batch)
    common.cuda_sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        losses.append(step(batch))  # .item(): one sync per step, as a loop that logs its loss
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    timed = batches[warmup:]
    tokens = sum(b.num_tokens for b in timed)
    padded = sum(int(b.input_ids.numel()) for b in timed)
    return Result(name, times, tokens, padded, flops, peak, losses[0])


def hf_contender(pair: models.Pair, batches: list, args, flops: float) -> Result:
    hf = pair.hf.train()
    opt = optimizer(list(hf.parameters()), fused=False)
    device = pair.device

    def step(batch) -> float:
        with autocast(args):
            out = hf(**hf_inputs(batch.to(device), pair.dtype))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    return run_steps("transformers", step, batches, args.warmup, flops)


@contextlib.contextmanager
def lever_settings(model, levers: set[str]) -> Iterator[None]:
    """Switch model-level levers on, and off again afterwards (fp8 is one-way: it runs last)."""
    if "ckpt" in levers:
        for module in (model.language_model, model.vision_tower):
            enable = getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable
            enable({"use_reentrant": False})
    compiled = []
    if "compile" in levers:  # the decoder (not the LM head) so the fused loss path is compiled too
        for module in (model.language_model.get_decoder(), model.vision_tower):
            module.compile(dynamic=True)
            compiled.append(module)
    if "fp8" in levers:
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model.language_model, module_filter_fn=lambda m, fqn: "lm_head" not in fqn)
    try:
        yield
    finally:
        if "ckpt" in levers:
            for module in (model.language_model, model.vision_tower):
                disable = getattr(module, "activation_checkpointing_disable", None) or module.gradient_checkpointing_disable
                disable()
        for module in compiled:
            module._compiled_call_impl = None


def ours_contender(pair: models.Pair, name: str, levers: set[str], samples: list, warmup_samples: list, args,
                   flops: float) -> Result:
    from llavakit.data.collate import Collator
    from llavakit.data.packing import PackingCollator
    from llavakit.model.losses import forward_with_linear_cross_entropy

    model = pair.ours.model.train()
    pad = pair.tokenizer.pad_token_id
    collate = PackingCollator(args.seq, pad) if "packing" in levers else Collator(pad)
    batches = [collate(mb) for mb in micro_batches(warmup_samples, args.batch, "group" in levers, args.seed + 1)]
    batches = batches[:args.warmup] + [collate(mb) for mb in micro_batches(samples, args.batch, "group" in levers,
                                                                           args.seed)]
    opt = optimizer(list(model.parameters()), fused="fused_adamw" in levers)
    forward = (lambda b: forward_with_linear_cross_entropy(model, chunk_size=args.chunk, **b.model_inputs())) \
        if "fused_ce" in levers else (lambda b: model(**b.model_inputs()))

    def step(batch) -> float:
        with autocast(args):
            out = forward(batch.to(pair.device, pair.dtype))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    with lever_settings(model, levers):
        return run_steps(name, step, batches, args.warmup, flops)


# ---- main ------------------------------------------------------------------------------------------------
def first_losses(pair: models.Pair, batch) -> tuple[float, float]:
    """Both models' loss on one padded batch before any step (same weights: they must agree)."""
    with torch.no_grad():
        batch = batch.to(pair.device, pair.dtype)
        ours = pair.ours.model(**batch.model_inputs()).loss.item()
        theirs = pair.hf(**hf_inputs(batch, pair.dtype)).loss.item()
    return ours, theirs


def size_list(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=models.SHAPES, default="quickstart")
    parser.add_argument("--mode", choices=["full", "frozen_vision", "lora"], default=None,
                        help="default: lora for 7b, full otherwise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="parameters and activations; default: float32 on CPU, bfloat16 on a GPU")
    parser.add_argument("--amp", action="store_true", help="float32 weights with bf16 autocast (both loops)")
    parser.add_argument("--batch", type=int, default=4, help="samples per micro-batch (= per optimizer step)")
    parser.add_argument("--seq", type=int, default=None, help="longest sample / packed row (default: 512 CPU, 8192 GPU)")
    parser.add_argument("--text-max", type=int, default=None, help="longest text part (default: seq / 4)")
    parser.add_argument("--image-sizes", type=size_list, default=None,
                        help="HxW,... drawn per sample (default: the shape's crop times 1x1, 1.25x1.67, 2x2.67)")
    parser.add_argument("--image-fraction", type=float, default=0.85, help="share of samples with an image")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 4 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 3 GPU)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="run every contender this many times in turn, keep each one's best "
                             "(default: 3 on CPU, a shared machine; 1 on a GPU)")
    parser.add_argument("--levers", default="packing,group,fused_ce,ckpt,fused_adamw",
                        help=f"comma list of {', '.join(LEVERS)}; each alone, then all together")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=2048, help="rows per chunk of the fused cross-entropy")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's dense peak")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default on CPU: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.mode = args.mode or ("lora" if args.shape == "7b" else "full")
    args.dtype = args.dtype or ("bfloat16" if gpu and not args.amp else "float32")
    if args.amp and args.dtype != "float32":
        parser.error("--amp keeps float32 weights: leave --dtype out")
    args.seq = args.seq or (8192 if gpu else 512)
    args.text_max = args.text_max or args.seq // 4
    args.steps = args.steps or (20 if gpu else 4)
    args.rounds = args.rounds or (1 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    common.set_threads(args.threads, args.device)
    levers = [lever.strip() for lever in args.levers.split(",") if lever.strip()]
    unknown = set(levers) - set(LEVERS)
    if unknown:
        parser.error(f"unknown levers {sorted(unknown)}; choose from {', '.join(LEVERS)}")

    pair = models.build_pair(args.shape, args.device, getattr(torch, args.dtype), seed=args.seed, attn=args.attn)
    crop = pair.ours.config.visual.crop_size
    args.image_sizes = args.image_sizes or [(crop, crop), (int(crop * 1.25), int(crop * 5 / 3)), (crop * 2, crop * 8 // 3)]
    fits = [size for size in args.image_sizes if visual_tokens(pair, size) + 64 <= args.seq]
    if not fits:
        parser.error(f"no image size in {args.image_sizes} fits --seq {args.seq} with text")
    args.image_sizes = fits
    samples = make_samples(pair, args.steps * args.batch, args, args.seed)
    warmup_samples = make_samples(pair, args.warmup * args.batch, args, args.seed + 1000)

    frozen_unused(pair.ours.model.vision_tower)
    frozen_unused(pair.hf.model.vision_tower)
    lora_params = 0
    if args.mode == "lora":
        lora_params = add_lora(pair.ours.model.language_model, args.lora_rank)
        add_lora(pair.hf, args.lora_rank, regex=r".*language_model.*\.(" + "|".join(LORA_TARGETS) + ")")
    set_trainable(ours_parts(pair.ours.model), args.mode)
    set_trainable(hf_parts(pair.hf), args.mode)
    if args.mode == "lora":  # set_trainable froze the LLM; its adapters train
        for module in (pair.ours.model, pair.hf):
            for name, param in module.named_parameters():
                param.requires_grad_(param.requires_grad or "lora_" in name)
    parts = components(pair, samples, args.mode, lora_params)
    flops = common.step_flops(parts)

    from llavakit.data.collate import Collator

    pad = pair.tokenizer.pad_token_id
    plain = [Collator(pad)(mb) for mb in micro_batches(warmup_samples, args.batch, False, args.seed + 1)]
    plain = plain[:args.warmup] + [Collator(pad)(mb) for mb in micro_batches(samples, args.batch, False, args.seed)]
    ours_loss, hf_loss = first_losses(pair, plain[args.warmup])
    if args.dtype == "float32" and not args.amp and abs(ours_loss - hf_loss) > 1e-4:
        raise AssertionError(f"first losses differ: ours {ours_loss} vs transformers {hf_loss}")

    runs = [("ours", set())] + [(f"ours+{lever}", {lever}) for lever in levers if lever != "fp8"]
    if len(levers) > 1:
        runs.append(("ours+all", set(levers) - {"fp8"}))
    if "fp8" in levers:  # float8 conversion is one-way: it runs last
        runs.append(("ours+all+fp8" if len(levers) > 1 else "ours+fp8", set(levers)))
    best: dict[str, Result] = {}
    for round_index in range(args.rounds):  # rounds: every contender again, the best round kept
        last = round_index == args.rounds - 1
        contenders = [("transformers", lambda: hf_contender(pair, plain, args, flops))]
        contenders += [(name, lambda name=name, chosen=chosen: ours_contender(pair, name, chosen, samples,
                                                                              warmup_samples, args, flops))
                       for name, chosen in runs if round_index == 0 or "fp8" not in chosen]
        for name, run in contenders:
            try:
                result = run()
            except (ImportError, RuntimeError, NotImplementedError) as err:  # out of memory, a lever this machine lacks
                result = Result(name, [float("nan")], 0, 0, flops, None, float("nan"), note=f"failed: {err}"[:200])
            if name not in best or result.rate > best[name].rate:
                best[name] = result
            if name == "transformers" and last:
                pair.hf = None  # free its weights before ours run
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
    results = list(best.values())

    env = common.environment()
    peak = common.peak_tflops(env.get("gpu", {}).get("name", ""), args.peak_tflops) if gpu else args.peak_tflops
    base_rate = None
    rows = []
    for result in results:
        seconds = sum(result.step_s)
        rate = result.tokens / seconds if result.tokens else None
        base_rate = rate if result.name == "transformers" else base_rate
        rows.append({
            "contender": result.name, "tokens/s": rate, "vs transformers": common.ratio(rate, base_rate),
            "step s": seconds / len(result.step_s), "MFU %": (100 * flops / seconds / (peak * 1e12)) if peak and
            result.tokens else None, "TFLOPS": flops / seconds / 1e12 if result.tokens else None,
            "peak GiB": result.peak_gib, "padding %": 100 * (1 - result.tokens / result.padded_tokens)
            if result.padded_tokens else None, "loss at first timed step": result.first_loss, "note": result.note,
            "step_s": result.step_s,
        })
    settings = {k: v for k, v in vars(args).items()} | pair.describe() | {
        "samples": len(samples), "tokens": sum(s.length for s in samples), "first_loss_ours": ours_loss,
        "first_loss_transformers": hf_loss, "flops_per_pass": flops, "peak_tflops": peak,
        "components": [{"name": c.name, "forward_flops": c.forward_flops, "mode": c.mode} for c in parts]}
    columns = ["contender", "tokens/s", "vs transformers", "step s", "MFU %", "TFLOPS", "peak GiB", "padding %", "note"]
    common.report(f"train-{args.shape}-{args.mode}", env, rows, columns, args.out, settings)
    print(f"first loss on the same batch: ours {ours_loss:.6f}, transformers {hf_loss:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
