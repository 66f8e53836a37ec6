"""Small BPE tokenizers trained on the spot, for tiny test checkpoints and the synthetic world."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llavakit.processing.processor import DEFAULT_CHAT_TEMPLATE

CHATML_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

SAMPLE_TEXT = [
    "What is shown in the image? A red circle and a blue square on a white background.",
    "Describe the picture in detail. There are three objects: a small green triangle at the top left.",
    "How many objects are there? Answer with one word. Two.",
    "The quick brown fox jumps over the lazy dog, 0123456789 times; is it left or right?",
    "Hello! How can I help you today? The video shows a ball moving from left to right.",
]


def train_bpe_tokenizer(
    texts: Iterable[str] = SAMPLE_TEXT,
    vocab_size: int = 400,
    special_tokens: list[str] = CHATML_SPECIAL,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    bos_token: str | None = None,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the given special tokens and chat template.

    Byte-level pre-tokenization means any text encodes (no unknown tokens), as in Qwen2 / Llama 3.
    """
    specials = list(dict.fromkeys(special_tokens + ([bos_token] if bos_token else [])))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos_token, pad_token=pad_token, bos_token=bos_token,
        additional_special_tokens=[t for t in specials if t not in (eos_token, pad_token, bos_token)],
    )
    if bos_token:
        # Llama-style: prepend BOS when add_special_tokens=True.
        from tokenizers import processors

        bos_id = tokenizer.convert_tokens_to_ids(bos_token)
        backend = tokenizer.backend_tokenizer
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    tokenizer.chat_template = chat_template
    return tokenizer
