"""Typed settings of the quickstart's tiny components: a SigLIP-style vision tower and a Qwen2 LM.

Model shapes and step counts live here; the cache key is computed from these dataclasses, so every
field that changes the trained weights must be a field (and nothing else should be).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

# Bump when a change to the training code changes the weights for the same settings, so cached
# components trained by older code are not reused.
COMPONENTS_VERSION = 3


def _check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def _raise(name: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"invalid {name}: " + "; ".join(problems))


@dataclass(frozen=True)
class VisionSettings:
    """The image tower (a transformers SiglipVisionModel) and its contrastive training."""

    image_size: int = 64
    patch_size: int = 16  # 64 / 16 -> 4x4 = 16 tokens per crop, one per cell of the world's grid
    hidden_size: int = 64
    # 4 layers, not 2: with the token-name term below, a single token carries more of its object's
    # shape (probe "shape_token"), and the quickstart's shape answers followed.
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    text_hidden_size: int = 64  # the caption encoder, discarded after training
    text_layers: int = 1
    embed_dim: int = 64  # shared image-text embedding
    loss: Literal["sigmoid", "softmax"] = "sigmoid"  # SigLIP or CLIP, image-caption level
    region_weight: float = 1.0  # box-name contrastive term (0: whole captions only)
    # Token-name term: each token under a box names the box's object on its own, weighted by its
    # share of the box. LLaVA's LM reads tokens one by one, and without this term the pooled box
    # told the shape far better than any one of its tokens (0: off).
    token_weight: float = 1.0
    # Token-position term: each token says which row and column of the grid it is in (two linear
    # heads). Attention hands the LM a token's content, not its place, and the contrastive terms
    # wash place out: without the term the object's own token told its position worse than an
    # untrained tower's (probe "position_token"). Readable by a probe is not enough: at a weight
    # of 1 place stayed a small share of a token's variance and the LM never learned to name an
    # object's side; a larger weight gives place a larger share (probe "position_share") and it
    # did. Off (0) by default; the quickstart recipe sets it (components.vision.position_weight).
    position_weight: float = 0.0
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    probe_images: int = 500  # rendered per probe split (train and test)

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, self.patch_size > 0 and self.image_size % self.patch_size == 0,
               f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        _check(problems, self.hidden_size % self.num_heads == 0,
               f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        _check(problems, self.text_hidden_size % 4 == 0, f"text_hidden_size must be divisible by 4, got {self.text_hidden_size}")
        for name in ("num_layers", "text_layers", "steps", "batch_size", "embed_dim", "mlp_ratio", "probe_images"):
            _check(problems, getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(problems, self.batch_size >= 2, f"batch_size must be >= 2 for a contrastive loss, got {self.batch_size}")
        _check(problems, self.loss in ("sigmoid", "softmax"), f"loss must be 'sigmoid' or 'softmax', got {self.loss!r}")
        _check(problems, 0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(problems, self.region_weight >= 0, f"region_weight must be >= 0, got {self.region_weight}")
        _check(problems, self.token_weight >= 0, f"token_weight must be >= 0, got {self.token_weight}")
        _check(problems, self.position_weight >= 0, f"position_weight must be >= 0, got {self.position_weight}")
        _raise("VisionSettings", problems)


@dataclass(frozen=True)
class LanguageSettings:
    """The BPE tokenizer and the Qwen2 causal LM."""

    vocab_size: int = 768  # upper bound; BPE stops early once the corpus has no merges left
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    # Positions up to seq_len are trained; LLaVA prompts with AnyRes images run to a few hundred tokens.
    seq_len: int = 512
    max_position_embeddings: int = 4096
    # Far fewer steps left an LM whose answer ignored the question (the same colour, number and
    # direction words whatever was asked); at this count it answers each question with its own kind.
    steps: int = 400
    batch_size: int = 6
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    val_fraction: float = 0.05  # documents held out for the reported perplexity

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, self.hidden_size % self.num_heads == 0,
               f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        _check(problems, self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0,
               f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        _check(problems, self.vocab_size >= 300, f"vocab_size must be >= 300 (256 bytes + specials + merges), got {self.vocab_size}")
        for name in ("num_layers", "steps", "batch_size", "intermediate_size"):
            _check(problems, getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(problems, 8 <= self.seq_len <= self.max_position_embeddings,
               f"seq_len must be in 8..max_position_embeddings ({self.max_position_embeddings}), got {self.seq_len}")
        _check(problems, 0 < self.val_fraction < 0.5, f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        _check(problems, 0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _raise("LanguageSettings", problems)


@dataclass(frozen=True)
class ComponentSettings:
    """Both components. ``scale`` multiplies the step counts (e.g. 10 on a GPU for a stronger pair).

    ``device`` (None: CUDA when available) and ``threads`` (None: torch's default) change where and
    how fast training runs, not what it computes, so they are left out of the cache key.
    """

    vision: VisionSettings = field(default_factory=VisionSettings)
    language: LanguageSettings = field(default_factory=LanguageSettings)
    seed: int = 0
    scale: float = 1.0
    device: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, self.scale > 0, f"scale must be > 0, got {self.scale}")
        _check(problems, self.threads is None or self.threads >= 1, f"threads must be >= 1 or None, got {self.threads}")
        _raise("ComponentSettings", problems)

    def steps(self, base: int) -> int:
        """A step count after ``scale``; never below one."""
        return max(1, round(base * self.scale))

    def key_data(self, part: Literal["vision", "language"]) -> dict:
        """What determines one component's weights (besides the world and the code version)."""
        return {part: dataclasses.asdict(getattr(self, part)), "seed": self.seed, "scale": self.scale}
