"""An lmms-eval model ("simple" kind) for llavakit models: any lmms-eval task on a llavakit checkpoint.

    lmms-eval --model llavakit --model_args pretrained=runs/model,dtype=bfloat16 --tasks mme,pope \\
        --batch_size 8 --output_path runs/lmms

lmms-eval finds it through the ``lmms_eval.models`` entry point (`llavakit.evaluation.lmms_plugin`).
Requests arrive as lmms-eval `Instance`s: ``generate_until`` args are (context, generation kwargs,
doc_to_visual, doc_id, task, split); ``loglikelihood`` args are (context, doc_to_target, doc_to_visual,
doc_id, task, split). Visuals are PIL images or video paths; a context without ``<image>``/``<video>``
gets them in front, as LLaVA writes ``<image>\\n`` + question.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from llavakit.data.templates import as_parts

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]


def _media_part(visual: Any) -> dict:
    if isinstance(visual, (str, Path)):
        kind = "video" if Path(visual).suffix.lower() in VIDEO_SUFFIXES else "image"
        return {"type": kind, kind: str(visual)}
    if hasattr(visual, "size") and hasattr(visual, "mode"):  # PIL image
        return {"type": "image", "image": visual.convert("RGB")}
    raise ValueError(f"llavakit takes images and videos; got a visual of type {type(visual).__name__}")


def conversation(context: str, visuals: Sequence[Any]) -> list[dict]:
    """One user turn: the context's placeholders filled with ``visuals`` in order, or the visuals in
    front of a context that has none."""
    media = [_media_part(v) for v in visuals]
    parts = as_parts(context, ("<image>", "<video>"))
    if not any(p["type"] != "text" for p in parts):
        return [{"role": "user", "content": media + parts}]
    queue = {kind: [m for m in media if m["type"] == kind] for kind in ("image", "video")}
    content = []
    for part in parts:
        if part["type"] == "text":
            content.append(part)
        elif queue[part["type"]]:
            content.append(queue[part["type"]].pop(0))
        else:
            raise ValueError(f"the context has more <{part['type']}> placeholders than visuals")
    return [{"role": "user", "content": content}]


def sampling_kwargs(gen_kwargs: dict) -> dict[str, Any]:
    """lmms-eval generation kwargs -> `Llava.generate` keyword arguments."""
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.pop("until", None)
    stop = [until] if isinstance(until, str) else list(until or [])
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        raise ValueError("llavakit generates greedily or by sampling; beam search (num_beams > 1) is not supported")
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    if gen_kwargs.get("do_sample") and temperature == 0.0:
        temperature = 1.0  # transformers' default when sampling is asked for without a temperature
    return {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or 1024),
        "temperature": temperature,
        "top_p": float(gen_kwargs.get("top_p") or 1.0),
        "stop": [s for s in stop if s] or None,
    }


class LlavakitLmms(lmms):
    """``--model_args pretrained=PATH[,device=cuda][,dtype=bfloat16][,batch_size=8][,threads=N]``."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32",
                 batch_size: int | str | None = 1, threads: int | str | None = None, **_: Any) -> None:
        super().__init__()
        from llavakit.api import Llava, load

        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
        if threads:
            torch.set_num_threads(int(threads))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # one GPU per process under accelerate / torchrun
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        elif device == "cuda":
            device = f"cuda:{local_rank}"
        self.llava: Llava = load(pretrained, dtype=DTYPES[dtype], device=device)
        self.batch_size_per_gpu = max(1, int(batch_size or 1))
        self._device = torch.device(device)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def _visuals(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list[Any]:
        if doc_to_visual is None:
            return []
        return _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batches of requests with equal generation kwargs, longest context first."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="llavakit responding")
        for indices in groups.values():
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            kwargs = sampling_kwargs(requests[indices[0]].args[1])
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                conversations = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    conversations.append(conversation(context, self._visuals(doc_to_visual, doc_id, task, split)))
                for i, generation in zip(chunk, self.llava.generate(conversations, **kwargs)):
                    results[i] = generation.text
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], generation.text)
                bar.update(len(chunk))
        bar.close()
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log P(continuation | context, visuals) after the chat template's generation prompt, and
        whether greedy decoding would produce the continuation."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="llavakit loglikelihood"):
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target(self.task_dict[task][split][doc_id]) if callable(target) else target
            if isinstance(continuation, list):
                continuation = continuation[0]
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            results.append(self.continuation_logprob(conversation(context, visuals), str(continuation)))
        return results

    def continuation_logprob(self, messages: list[dict], continuation: str) -> tuple[float, bool]:
        ids = self.llava.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return self.token_logprob(messages, ids)

    @torch.no_grad()
    def token_logprob(self, messages: list[dict], continuation: Sequence[int]) -> tuple[float, bool]:
        """Sum of log P(token) over ``continuation`` after the prompt, and whether each is the argmax."""
        if not continuation:
            return 0.0, True
        model = self.llava.model
        inputs = self.llava.prepare([messages]).to(model.device, next(model.parameters()).dtype)
        target = torch.tensor([list(continuation)], device=model.device)
        input_ids = torch.cat([inputs.input_ids, target], dim=1)
        logits = model(input_ids, torch.ones_like(input_ids), inputs.pixel_values, inputs.visual_items).logits
        n = target.shape[1]
        scores = logits[0, -n - 1:-1].float().log_softmax(-1)  # (n, vocab): the positions predicting the continuation
        logprob = scores.gather(-1, target[0, :, None]).sum().item()
        return logprob, bool((scores.argmax(-1) == target[0]).all())

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("llavakit's lmms-eval adapter does not implement multi-round generation")
