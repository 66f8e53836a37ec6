"""The Python API: ``llavakit.load(path)`` and ``model.generate(conversation)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from llavakit.checkpoint import io
from llavakit.config import LlavaConfig, VisualConfig
from llavakit.engine import Engine, EngineConfig, Request, SamplingSettings
from llavakit.errors import LlavakitError
from llavakit.model.llava import LlavaForCausalLM, needs_newline
from llavakit.processing.processor import LlavaProcessor, ModelInputs

Conversation = Sequence[dict]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int  # every prompt token, visual placeholders included
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


class Collected:
    """A request listener that keeps each choice's text, tokens and finish (for synchronous callers)."""

    def __init__(self, choices: int = 1, on_text: Callable[[str], None] | None = None):
        self.stream = on_text
        self.texts = [""] * choices
        self.finished: list[tuple[str, list[int]] | None] = [None] * choices
        self.error: Exception | None = None

    def on_text(self, choice: int, delta: str) -> None:
        self.texts[choice] += delta
        if self.stream is not None:
            self.stream(delta)

    def on_finish(self, choice: int, reason: str, token_ids: list[int]) -> None:
        self.finished[choice] = (reason, token_ids)

    def on_error(self, error: Exception) -> None:
        self.error = error

    def generation(self, choice: int, prompt_tokens: int) -> Generation:
        if self.error is not None:
            raise self.error
        reason, token_ids = self.finished[choice]
        return Generation(self.texts[choice], token_ids, prompt_tokens, reason)


def is_single_conversation(conversations: Any) -> bool:
    return bool(conversations) and isinstance(conversations[0], dict)


class Llava:
    """A model with its tokenizer and processor: what ``llavakit.load`` returns."""

    def __init__(self, model: LlavaForCausalLM, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.config: LlavaConfig = model.config
        self.processor = LlavaProcessor(self.config, tokenizer)
        self._engine_config = EngineConfig()
        self._engine: Engine | None = None

    # ---- the engine -----------------------------------------------------------------------
    def set_engine(self, config: EngineConfig) -> None:
        """Generate with this engine configuration from now on (its cache is allocated anew)."""
        if self._engine is not None:
            self._engine.close()
        self._engine_config, self._engine = config, None

    @property
    def engine(self) -> Engine:
        """The engine under ``generate`` (created on first use, with the configuration of ``set_engine``)."""
        if self._engine is None:
            self._engine = Engine(self, self._engine_config)
        return self._engine

    @classmethod
    def from_config(cls, config: LlavaConfig, tokenizer: Any) -> Llava:
        """A randomly initialised model for a config (image/video token ids taken from the tokenizer)."""
        config = config.model_copy(update={
            "image_token_id": tokenizer.convert_tokens_to_ids(config.image_token),
            "video_token_id": tokenizer.convert_tokens_to_ids(config.video_token),
        })
        return cls(LlavaForCausalLM.from_config(config).eval(), tokenizer)

    # ---- visual settings ------------------------------------------------------------------
    def set_visual(self, **changes: Any) -> None:
        """Change how media become tokens from now on, keeping the weights: ``video_frames=16`` asks
        about more frames than training sampled (the seeds' evaluation-time frame count), and any other
        field of ``VisualConfig``. A change that would need a learned vector the model lacks is refused."""
        unknown = sorted(set(changes) - set(VisualConfig.model_fields))
        if unknown:
            raise LlavakitError(f"visual setting {', '.join(unknown)}: unknown "
                                f"(known: {', '.join(VisualConfig.model_fields)})")
        try:
            visual = VisualConfig.model_validate({**self.config.visual.model_dump(), **changes})
        except ValidationError as err:
            problem = err.errors()[0]
            raise LlavakitError(f"visual setting {'.'.join(map(str, problem['loc'])) or 'visual'}: "
                                f"{problem['msg']}") from None
        config = self.config.model_copy(update={"visual": visual})
        if needs_newline(config) and self.model.image_newline is None:
            raise LlavakitError("visual settings: newline vectors asked, but this model has no learned "
                                "image_newline (it was trained with every newline setting 'none')")
        self.config = self.model.config = config
        self.processor = LlavaProcessor(config, self.tokenizer, self.processor.pixel_cache)

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
        results = self.generate_many([self.prepare([c]) for c in batch], settings, stop)
        return results[0] if single else results

    def generate_many(
        self, prompts: Sequence[ModelInputs], settings: SamplingSettings | Sequence[SamplingSettings],
        stop: Sequence[str] | None = None, on_text: Callable[[int, str], None] | None = None,
    ) -> list[Generation]:
        """Answer prepared prompts (one each) together, each with its settings (one for all, or one each);
        ``on_text(index, delta)`` streams the text."""
        per_prompt = [settings] * len(prompts) if isinstance(settings, SamplingSettings) else list(settings)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} sampling settings")
        listeners = [Collected(on_text=None if on_text is None else (lambda delta, i=i: on_text(i, delta)))
                     for i in range(len(prompts))]
        requests = [Request(inputs, s, listener, stop=list(stop or ()))
                    for inputs, s, listener in zip(prompts, per_prompt, listeners)]
        self.engine.run(requests)
        return [listener.generation(0, inputs.prompt_tokens[0]) for listener, inputs in zip(listeners, prompts)]

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
