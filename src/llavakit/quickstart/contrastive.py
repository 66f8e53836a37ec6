"""A tiny image-text dual encoder: a transformers SigLIP image tower and a throwaway caption encoder.

Only the image tower is kept; the caption encoder exists to give the contrastive loss something to
align with. Captions come from the world's small closed vocabulary, so a word-level tokenizer
and a two-layer transformer suffice (a bag of words would lose which colour goes with which shape).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from llavakit.quickstart.settings import VisionSettings
from llavakit.synth import vocab as world_vocab

WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
PAD, UNKNOWN = 0, 1


class CaptionVocab:
    """Word-level ids for captions: lower-cased words and punctuation (commas separate objects)."""

    def __init__(self, captions: Sequence[str]):
        words = sorted({w for c in captions for w in self.split(c)})
        self.ids = {w: i + 2 for i, w in enumerate(words)}  # 0 = pad, 1 = unknown

    @staticmethod
    def split(caption: str) -> list[str]:
        return WORD.findall(caption.lower())

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """(N, L) ids, right-padded with PAD to the longest caption."""
        rows = [[self.ids.get(w, UNKNOWN) for w in self.split(c)] or [UNKNOWN] for c in captions]
        out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out


# Word swaps that keep a caption grammatical but make it false (NegCLIP-style hard negatives).
SWAP_GROUPS: tuple[tuple[str, ...], ...] = (
    tuple(world_vocab.SHAPES),
    tuple(world_vocab.COLORS),
    ("small", "large"),
    ("left", "right"),
    ("top", "bottom"),
    ("two", "three", "four", "five"),  # "one" would also need "is" and a singular noun
)


class HardNegatives:
    """Captions with one attribute word swapped ("red circle" -> "red square").

    In a random batch the set of colours alone nearly identifies a caption, so plain contrastive
    training learns colour and little else. A swapped caption differs from the true one in exactly
    one shape, colour, size, side or count word, so the loss can only fall by seeing that attribute.
    """

    def __init__(self, vocab: CaptionVocab):
        self.alternatives: dict[int, list[int]] = {}
        for group in SWAP_GROUPS:
            ids = [vocab.ids[w] for w in group if w in vocab.ids]
            for i in ids:
                self.alternatives[i] = [j for j in ids if j != i]

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, L) caption ids -> (B, L) with one swappable word of each row replaced (if it has one)."""
        out = ids.clone()
        for row in out:
            slots = [k for k, token in enumerate(row.tolist()) if self.alternatives.get(token)]
            if slots:
                k = slots[int(torch.randint(len(slots), (1,), generator=generator))]
                choices = self.alternatives[int(row[k])]
                row[k] = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        return out


def tower_config(settings: VisionSettings) -> SiglipVisionConfig:
    # No attention-pooling head: LLaVA reads the patch tokens, and the head would be dead weight.
    return SiglipVisionConfig(
        image_size=settings.image_size, patch_size=settings.patch_size, hidden_size=settings.hidden_size,
        intermediate_size=settings.mlp_ratio * settings.hidden_size, num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads, vision_use_head=False,
    )


class CaptionEncoder(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, max_words: int, embed_dim: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
        self.positions = nn.Parameter(torch.randn(max_words, hidden) * 0.02)
        block = nn.TransformerEncoderLayer(hidden, nhead=4, dim_feedforward=2 * hidden, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, E)
        keep = ids != PAD
        x = self.words(ids) + self.positions[: ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=~keep))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)  # mean over real words
        return self.proj(pooled)


def box_weights(boxes: Sequence[tuple[float, float, float, float]], grid: int) -> torch.Tensor:
    """(n, grid * grid) share of each box's area in each patch (row-major), rows summing to 1."""
    if not boxes:
        return torch.zeros(0, grid * grid)
    b = torch.tensor(boxes, dtype=torch.float32)  # (n, 4): x1, y1, x2, y2 in 0..1
    edges = torch.linspace(0, 1, grid + 1)
    lo, hi = edges[:-1], edges[1:]  # (grid,)
    wx = (torch.minimum(hi, b[:, 2:3]) - torch.maximum(lo, b[:, 0:1])).clamp(min=0)  # (n, grid) overlap per column
    wy = (torch.minimum(hi, b[:, 3:4]) - torch.maximum(lo, b[:, 1:2])).clamp(min=0)  # (n, grid) overlap per row
    area = (wy[:, :, None] * wx[:, None, :]).flatten(1)  # (n, grid * grid)
    return area / area.sum(1, keepdim=True).clamp(min=1e-9)


class DualEncoder(nn.Module):
    """SigLIP tower and caption encoder in one embedding space, at two levels.

    Image level: the mean of the patch tokens against the whole caption (CLIP / SigLIP).
    Region level: the tokens under each annotated box, area-weighted, against the object's name
    ("red circle") among all the world's object names, a CLIP-style image-to-text loss.
    Token level: each of those tokens alone against the same names. LLaVA reads the patch tokens
    one by one, so this trains what it reads: each token says what covers it.
    Position: every token also says where it is (its row and column, through a linear head).
    """

    def __init__(self, settings: VisionSettings, vocab_size: int, max_words: int):
        super().__init__()
        self.tower = SiglipVisionModel(tower_config(settings))
        self.image_proj = nn.Linear(settings.hidden_size, settings.embed_dim)
        self.region_proj = nn.Linear(settings.hidden_size, settings.embed_dim)
        self.text = CaptionEncoder(vocab_size, settings.text_hidden_size, settings.text_layers, max_words,
                                   settings.embed_dim)
        sigmoid = settings.loss == "sigmoid"
        # SigLIP starts at t = 10, b = -10; CLIP at t = 1 / 0.07 with no bias.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0 if sigmoid else 1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0 if sigmoid else 0.0), requires_grad=sigmoid)
        self.region_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.grid = settings.image_size // settings.patch_size
        # row logits, then column logits; only with the term on (no parameters that never train)
        self.position_head = nn.Linear(settings.hidden_size, 2 * self.grid) if settings.position_weight > 0 else None

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, T, H)
        return self.tower(pixel_values=pixel_values).last_hidden_state

    def image_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, E)
        return F.normalize(self.image_proj(tokens.mean(1)), dim=-1)

    def region_embeddings(self, tokens: torch.Tensor, image_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(R, E) for R boxes: ``weights`` (R, T) pools the tokens of image ``image_index[r]``."""
        pooled = (weights[:, :, None] * tokens[image_index]).sum(1)  # (R, H)
        return F.normalize(self.region_proj(pooled), dim=-1)

    def token_logits(self, tokens: torch.Tensor, image_index: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
        """(R, T, K): every token of box r's image, on its own, against every object name. Weighted
        by the box's area share per token, this asks each token under an object to say what it is."""
        embedded = F.normalize(self.region_proj(tokens), dim=-1)[image_index]  # (R, T, E)
        return embedded @ names.T * self.region_scale.exp().clamp(max=100.0)

    def position_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each token's row and column (row-major grid), read by a linear head."""
        row_logits, column_logits = self.position_head(tokens).split(self.grid, dim=-1)  # (B, T, G) each
        cells = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)  # (B, T)
        rows = F.cross_entropy(row_logits.transpose(1, 2), cells // self.grid)
        columns = F.cross_entropy(column_logits.transpose(1, 2), cells % self.grid)
        return (rows + columns) / 2

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:  # (C, L) -> (C, E)
        return F.normalize(self.text(ids), dim=-1)

    def caption_logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:  # (B, C)
        return images @ texts.T * self.logit_scale.exp().clamp(max=100.0) + self.logit_bias

    def region_logits(self, regions: torch.Tensor, names: torch.Tensor) -> torch.Tensor:  # (R, K)
        return regions @ names.T * self.region_scale.exp().clamp(max=100.0)


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor, kind: str) -> torch.Tensor:
    """SigLIP (sigmoid) or CLIP (softmax) loss over (B, C) image-caption logits.

    The C >= B columns are the batch's own captions followed by hard negatives. ``positives[i, j]``
    marks every column whose text equals image i's caption: in a closed world the same caption
    ("There is one object in the image: a small cyan diamond.") recurs within a batch, and calling
    those pairs negatives would push apart images that the text cannot tell apart.
    """
    positives = positives.float()
    if kind == "sigmoid":
        signs = 2 * positives - 1
        return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
    image_to_text = F.cross_entropy(logits, positives / positives.sum(1, keepdim=True))
    columns = positives.T
    real = columns.sum(1) > 0  # hard-negative captions describe no image: no text-to-image term
    text_to_image = F.cross_entropy(logits.T[real], columns[real] / columns[real].sum(1, keepdim=True))
    return (image_to_text + text_to_image) / 2


def to_pixel_values(images: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [-1, 1]: SigLIP's mean = std = 0.5, as llavakit uses."""
    return images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.5)
