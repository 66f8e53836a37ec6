"""Typed settings of the quickstart's tiny components: a SigLIP-style vision tower and a Qwen2 LM.

Model shapes and step counts live here; the cache key is computed from these dataclasses, so every
field that changes the trained weights must be a field (and nothing else should be).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from llavakit.utils import described

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

    image_size: int = described(64, "side in pixels of the tower's input crop (a multiple of patch_size)")
    patch_size: int = described(16, "side in pixels of a patch; 64 / 16 gives 4x4 = 16 tokens per crop, one "
                                    "per cell of the world's grid")
    hidden_size: int = described(64, "width of the tower (divisible by num_heads)")
    # 4 layers, not 2: with the token-name term below, a single token carries more of its object's
    # shape (probe "shape_token"), and the quickstart's shape answers followed.
    num_layers: int = described(4, "transformer layers of the tower")
    num_heads: int = described(4, "attention heads of the tower")
    mlp_ratio: int = described(4, "MLP width as a multiple of hidden_size")
    text_hidden_size: int = described(64, "width of the caption encoder (discarded after training)")
    text_layers: int = described(1, "layers of the caption encoder")
    embed_dim: int = described(64, "size of the shared image-text embedding")
    loss: Literal["sigmoid", "softmax"] = described("sigmoid", "image-caption contrastive loss: sigmoid "
                                                               "(SigLIP) or softmax (CLIP)")
    region_weight: float = described(1.0, "weight of the box-name contrastive term (0: whole captions only)")
    # LLaVA's LM reads tokens one by one, and without this term the pooled box told the shape far
    # better than any one of its tokens.
    token_weight: float = described(1.0, "weight of the token-name term: each token under a box names the "
                                         "box's object on its own, weighted by its share of the box (0: off)")
    # Attention hands the LM a token's content, not its place, and the contrastive terms wash place
    # out: without the term the object's own token told its position worse than an untrained
    # tower's (probe "position_token"). Readable by a probe is not enough: at a weight of 1 place
    # stayed a small share of a token's variance and the LM never learned to name an object's side;
    # a larger weight gives place a larger share (probe "position_share") and it did.
    position_weight: float = described(0.0, "weight of the token-position term: each token says which row and "
                                            "column of the grid it is in (two linear heads); 0: off")
    steps: int = described(400, "training steps (before the components' scale)")
    batch_size: int = described(64, "images per training step")
    lr: float = described(3e-3, "peak learning rate")
    weight_decay: float = described(0.05, "AdamW weight decay")
    warmup_fraction: float = described(0.05, "share of the steps spent warming the learning rate up, in [0, 1)")
    probe_images: int = described(500, "images rendered per probe split (train and test)")

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

    vocab_size: int = described(768, "upper bound of the BPE vocabulary (at least 300); BPE stops early once "
                                     "the corpus has no merges left")
    hidden_size: int = described(128, "width of the LM (divisible by num_heads)")
    intermediate_size: int = described(384, "width of the LM's MLP")
    num_layers: int = described(4, "decoder layers of the LM")
    num_heads: int = described(4, "attention heads of the LM")
    num_kv_heads: int = described(2, "key/value heads (grouped-query attention; divides num_heads)")
    # LLaVA prompts with AnyRes images run to a few hundred tokens.
    seq_len: int = described(512, "tokens per training sequence: positions up to seq_len are trained")
    max_position_embeddings: int = described(4096, "the LM's max_position_embeddings: the longest sequence it "
                                                   "takes (at least seq_len)")
    # Far fewer steps left an LM whose answer ignored the question (the same colour, number and
    # direction words whatever was asked); at this count it answers each question with its own kind.
    steps: int = described(400, "training steps (before the components' scale)")
    batch_size: int = described(6, "sequences per training step")
    lr: float = described(3e-3, "peak learning rate")
    weight_decay: float = described(0.1, "AdamW weight decay")
    warmup_fraction: float = described(0.05, "share of the steps spent warming the learning rate up, in [0, 1)")
    val_fraction: float = described(0.05, "share of documents held out for the reported perplexity, in (0, 0.5)")

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
