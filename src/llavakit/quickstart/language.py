"""The tiny language model: a byte-level BPE tokenizer and a Qwen2 causal LM trained on the world's text.

Training text, one document each, seeded shuffle, a held-out slice for perplexity:
- every stage-2 conversation, text only, rendered through the ChatML chat template, so the LM
  knows the turn format and ends its replies with ``<|im_end|>``;
- every line of ``text_corpus.txt`` as plain text (captions, descriptions, questions, answers).
Documents are joined with ``<|endoftext|>`` and cut into fixed windows (nanoGPT-style packing),
so positions up to ``seq_len`` are trained.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from llavakit.processing.processor import DEFAULT_CHAT_TEMPLATE
from llavakit.quickstart import runtime
from llavakit.quickstart.settings import ComponentSettings, LanguageSettings
from llavakit.quickstart.world_data import chat_conversations, corpus_lines
from llavakit.tiny.tokenizer import CHATML_SPECIAL, train_bpe_tokenizer

DOCUMENT_END = "<|endoftext|>"
TURN_END = "<|im_end|>"


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """ChatML specials as single tokens, ``<|im_end|>`` as EOS, the default content-part template."""
    tokenizer = train_bpe_tokenizer(
        texts, vocab_size=vocab_size, special_tokens=CHATML_SPECIAL, eos_token=TURN_END, pad_token=DOCUMENT_END,
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )
    return tokenizer


def documents(conversations: list[list[dict]], lines: list[str], tokenizer: Any) -> list[str]:
    """Each conversation rendered through the chat template, then the corpus lines as they are."""
    return [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations] + lines


def model_config(settings: LanguageSettings, tokenizer: Any) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads, max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def token_stream(texts: list[str], tokenizer: Any) -> torch.Tensor:
    """All documents as one 1-D id tensor, each followed by ``<|endoftext|>``."""
    end = tokenizer.convert_tokens_to_ids(DOCUMENT_END)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return torch.tensor([t for doc in ids for t in doc + [end]], dtype=torch.long)


def random_windows(stream: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, length + 1) windows at random offsets: inputs are [:, :-1], targets [:, 1:]."""
    starts = torch.randint(len(stream) - length - 1, (batch,), generator=generator)
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


@torch.no_grad()
def mean_loss(model: torch.nn.Module, stream: torch.Tensor, length: int, device: torch.device, batch: int = 8) -> float:
    """Token-weighted mean next-token loss over consecutive windows that cover the whole stream."""
    model.eval()
    full = (len(stream) - 1) // length
    inputs = stream[: full * length].view(full, length)
    targets = stream[1 : full * length + 1].view(full, length)
    pieces = [(inputs[i : i + batch], targets[i : i + batch]) for i in range(0, full, batch)]
    if full * length < len(stream) - 1:  # the ragged tail
        pieces.append((stream[full * length : -1][None], stream[full * length + 1 :][None]))
    total = 0.0
    for x, y in pieces:
        logits = model(input_ids=x.to(device)).logits.float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
    model.train()
    return total / (len(stream) - 1)


def split_documents(texts: list[str], fraction: float, generator: torch.Generator) -> tuple[list[str], list[str]]:
    order = torch.randperm(len(texts), generator=generator).tolist()
    held = max(1, round(len(texts) * fraction))
    return [texts[i] for i in order[held:]], [texts[i] for i in order[:held]]


def train_language(world_dir: Path, out_dir: Path, settings: ComponentSettings, progress: bool = True) -> dict:
    """Train tokenizer and LM, save both to ``out_dir``, return metrics (losses, perplexity, seconds)."""
    start = time.perf_counter()
    lm = settings.language
    device = runtime.pick_device(settings.device)
    generator = runtime.seed_everything(settings.seed)
    lines = corpus_lines(world_dir)
    conversations = chat_conversations(world_dir, grounded=True)
    # The role names join the BPE corpus because every rendered turn starts with one: left out,
    # each splits into several tokens, a large share of a short question-answer turn.
    texts = lines + [part for c in conversations for m in c for part in (m["role"], m["content"])]
    tokenizer = build_tokenizer(texts, lm.vocab_size)
    tokenizer.model_max_length = lm.max_position_embeddings
    train_texts, val_texts = split_documents(documents(conversations, lines, tokenizer), lm.val_fraction, generator)
    train_stream, val_stream = token_stream(train_texts, tokenizer), token_stream(val_texts, tokenizer)
    length = min(lm.seq_len, len(train_stream) - 2)
    if length < 8:
        raise ValueError(f"the world's text is too short to train the LM ({len(train_stream)} tokens)")

    model = Qwen2ForCausalLM(model_config(lm, tokenizer)).to(device)
    initial_loss = mean_loss(model, val_stream, length, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lm.lr, betas=(0.9, 0.95), weight_decay=lm.weight_decay)
    steps = settings.steps(lm.steps)
    losses = []
    with runtime.progress_bar(steps, "language model", progress) as bar:
        for step in range(steps):
            runtime.set_lr(optimizer, runtime.cosine_lr(step, steps, lm.lr, lm.warmup_fraction))
            window = random_windows(train_stream, lm.batch_size, length, generator).to(device)
            loss = model(input_ids=window[:, :-1], labels=window[:, :-1]).loss  # transformers shifts labels
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    train_seconds = time.perf_counter() - start
    val_loss = mean_loss(model, val_stream, length, device)

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval().save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    tail = losses[-10:]
    return {
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train_stream),
        "val_tokens": len(val_stream),
        "steps": steps,
        "seq_len": length,
        "initial_val_loss": round(initial_loss, 4),
        "final_train_loss": round(sum(tail) / len(tail), 4),
        "val_loss": round(val_loss, 4),
        "loss_curve": runtime.loss_curve(losses),
        "perplexity": round(math.exp(val_loss), 4),
        "train_seconds": round(train_seconds, 2),
        "device": device.type,
    }
