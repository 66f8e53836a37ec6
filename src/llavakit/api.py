"""The Python API: ``llavakit.load(path)`` and ``model.generate(conversation)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llavakit.checkpoint import io
from llavakit.config import LlavaConfig
from llavakit.model.generation import SamplingSettings, generate_ids
from llavakit.model.llava import LlavaForCausalLM
from llavakit.processing.processor import LlavaProcessor, ModelInputs

Conversation = Sequence[dict]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int  # every prompt token, visual placeholders included
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


def is_single_conversation(conversations: Any) -> bool:
    return bool(conversations) and isinstance(conversations[0], dict)


class Llava:
    """A model with its tokenizer and processor: what ``llavakit.load`` returns."""

    def __init__(self, model: LlavaForCausalLM, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.config: LlavaConfig = model.config
        self.processor = LlavaProcessor(self.config, tokenizer)

    @classmethod
    def from_config(cls, config: LlavaConfig, tokenizer: Any) -> Llava:
        """A randomly initialised model for a config (image/video token ids taken from the tokenizer)."""
        config = config.model_copy(update={
            "image_token_id": tokenizer.convert_tokens_to_ids(config.image_token),
            "video_token_id": tokenizer.convert_tokens_to_ids(config.video_token),
        })
        return cls(LlavaForCausalLM.from_config(config).eval(), tokenizer)

    # ---- inputs ---------------------------------------------------------------------------
    def prepare(self, conversations: Sequence[Conversation], add_generation_prompt: bool = True) -> ModelInputs:
        rendered = [self.processor.render_prompt(c, add_generation_prompt) for c in conversations]
        return self.processor([prompt for prompt, _ in rendered], [media for _, media in rendered])

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.language_model.generation_config, "eos_token_id", None)
        ids |= set(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    # ---- generation -----------------------------------------------------------------------
    def generate(
        self,
        conversations: Conversation | Sequence[Conversation],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation | list[Generation]:
        """Answer one conversation (returns a Generation) or a list of them (returns a list)."""
        single = is_single_conversation(conversations)
        batch = [conversations] if single else list(conversations)
        settings = SamplingSettings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
        inputs = self.prepare(batch)
        results = self.generate_from_inputs(inputs, settings, stop)
        return results[0] if single else results

    def generate_from_inputs(
        self, inputs: ModelInputs, settings: SamplingSettings, stop: Sequence[str] | None = None
    ) -> list[Generation]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        on_step = self._stop_watcher(inputs.input_ids.shape[0], stop) if stop else None
        sequences = generate_ids(self.model, inputs, settings, self.eos_token_ids, pad, on_step)
        return [self._finish(ids, prompt, settings, stop) for ids, prompt in zip(sequences, inputs.prompt_tokens)]

    def _stop_watcher(self, batch: int, stop: Sequence[str]):
        tokens: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch

        def on_step(step: torch.Tensor) -> bool:
            for row, token in enumerate(step.tolist()):
                if not done[row]:
                    tokens[row].append(token)
                    text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
                    done[row] = any(s in text for s in stop) or token in self.eos_token_ids
            return all(done)

        return on_step

    def _finish(self, ids: list[int], prompt: int, settings: SamplingSettings, stop: Sequence[str] | None) -> Generation:
        eos = set(self.eos_token_ids)
        ended = bool(ids) and ids[-1] in eos
        text = self.tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True)
        if stop:
            cut = min((text.index(s) for s in stop if s in text), default=None)
            if cut is not None:
                text, ended = text[:cut], True
        return Generation(text, ids, prompt, "stop" if ended else "length")

    # ---- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        return io.save(self.model, self.tokenizer, directory)

    def export(self, directory: str | Path, layout: str = "hf") -> Path:
        """``hf``: transformers hub layout (vLLM, transformers); ``original``: LLaVA-NeXT research layout (SGLang)."""
        if layout not in io.EXPORTERS:
            raise ValueError(f"export layout {layout!r}: expected one of {', '.join(io.EXPORTERS)}")
        return io.EXPORTERS[layout](self.model, self.tokenizer, directory)


def load(path_or_id: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         adapter: str | Path | None = None) -> Llava:
    """Load a llavakit checkpoint, or a transformers llava / llava_next / llava_onevision one.

    ``adapter``: a LoRA adapter directory (a LoRA run's ``RUN/adapter``) to merge into the loaded
    base model, giving the model that run trained.
    """
    model, tokenizer, _ = io.load(path_or_id, dtype=dtype)
    if adapter is not None:
        from llavakit.checkpoint.adapter import merge_adapter

        model = merge_adapter(model, adapter).eval()
    return Llava(model.to(device), tokenizer)
