"""Contrastive training of the tiny SigLIP tower on the world's captioned scenes, then linear probes.

Writes a directory that loads like a released SigLIP vision tower: ``SiglipVisionModel``
weights and config plus a ``SiglipImageProcessor`` (64 px, mean = std = 0.5).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from transformers import SiglipImageProcessor

from llavakit.quickstart import runtime
from llavakit.quickstart.contrastive import (
    CaptionVocab,
    DualEncoder,
    HardNegatives,
    contrastive_loss,
    to_pixel_values,
)
from llavakit.quickstart.probe import run_probes
from llavakit.quickstart.settings import ComponentSettings
from llavakit.quickstart.world_data import captioned_images, read_manifest

# LLaVA reads hidden_states[FEATURE_LAYER]; the contrastive head pools the last layer, so -1 holds
# the trained features (OneVision likewise reads the last layer it keeps).
FEATURE_LAYER = -1


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norms, embeddings tables and the temperature stay undecayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or "embedding" in name or name.startswith("text.words") or "positions" in name
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class CaptionBatches:
    """Seeded batches of (image, one of its captions), caption chosen afresh each time, plus one
    hard-negative caption per image."""

    def __init__(self, pixels: np.ndarray, captions: list[list[str]], vocab: CaptionVocab, generator: torch.Generator):
        self.pixels = torch.from_numpy(pixels)  # (N, S, S, 3) uint8
        flat = sorted({c for caps in captions for c in caps})
        self.tokens = vocab.encode(flat)  # (C, L)
        index = {c: i for i, c in enumerate(flat)}
        self.choices = [[index[c] for c in caps] for caps in captions]
        self.negatives = HardNegatives(vocab)
        self.generator = generator
        self.order: list[int] = []

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, S, 3) images, (2B, L) caption ids (true, then swapped), (B, 2B) positive mask."""
        while len(self.order) < batch_size:  # epochs of a fresh permutation each
            self.order += torch.randperm(len(self.pixels), generator=self.generator).tolist()
        picks, self.order = self.order[:batch_size], self.order[batch_size:]
        caption_ids = [self.choices[i][int(torch.randint(len(self.choices[i]), (1,), generator=self.generator))]
                       for i in picks]
        true = self.tokens[caption_ids]
        true = true[:, : int((true != 0).sum(1).max())]  # trim padding columns
        texts = torch.cat([true, self.negatives(true, self.generator)])
        positives = (true[:, None, :] == texts[None, :, :]).all(-1)  # same text, wherever it came from
        return self.pixels[picks], texts, positives


def train_vision(world_dir: Path, out_dir: Path, settings: ComponentSettings, progress: bool = True) -> dict:
    """Train the tower, save it to ``out_dir``, and return its metrics (loss, probes, seconds)."""
    start = time.perf_counter()
    vision = settings.vision
    device = runtime.pick_device(settings.device)
    generator = runtime.seed_everything(settings.seed)
    data = captioned_images(world_dir, vision.image_size)
    vocab = CaptionVocab([c for caps in data.captions for c in caps])
    batches = CaptionBatches(data.pixels, data.captions, vocab, generator)
    model = DualEncoder(vision, len(vocab), max_words=batches.tokens.shape[1]).to(device)
    untrained_tower = copy.deepcopy(model.tower)
    optimizer = torch.optim.AdamW(_param_groups(model, vision.weight_decay), lr=vision.lr, betas=(0.9, 0.98))
    steps = settings.steps(vision.steps)
    batch_size = min(vision.batch_size, len(data.pixels))

    losses = []
    model.train()
    with runtime.progress_bar(steps, "vision tower (contrastive)", progress) as bar:
        for step in range(steps):
            runtime.set_lr(optimizer, runtime.cosine_lr(step, steps, vision.lr, vision.warmup_fraction))
            images, texts, positives = batches.next(batch_size)
            logits = model.logits(to_pixel_values(images.to(device)), texts.to(device))
            loss = contrastive_loss(logits, positives.to(device), vision.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    train_seconds = time.perf_counter() - start

    _save_tower(model.tower, vision.image_size, out_dir)
    probe_start = time.perf_counter()
    max_objects = read_manifest(world_dir)["settings"]["max_objects"]
    probes = run_probes({"trained": model.tower, "untrained": untrained_tower.to(device)}, vision.probe_images,
                        vision.image_size, settings.seed, max_objects, FEATURE_LAYER, device)
    return {
        "images": len(data.pixels),
        "captions": len(batches.tokens),
        "steps": steps,
        "batch_size": batch_size,
        "initial_loss": round(losses[0], 4),
        "final_loss": round(float(np.mean(losses[-10:])), 4),
        "feature_layer": FEATURE_LAYER,
        "probe": probes,
        "train_seconds": round(train_seconds, 2),
        "probe_seconds": round(time.perf_counter() - probe_start, 2),
        "device": device.type,
    }


def _save_tower(tower: torch.nn.Module, image_size: int, out_dir: Path) -> None:
    tower.eval().save_pretrained(str(out_dir))
    SiglipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_resize=True, resample=3,  # bicubic, as llavakit's processor squashes
    ).save_pretrained(str(out_dir))
