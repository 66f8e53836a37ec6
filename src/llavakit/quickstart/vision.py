"""Contrastive training of the tiny SigLIP tower on the world's captioned scenes, then linear probes.

The images and captions are annotations.jsonl's single-image training scenes (stage-1 and stage-2;
eval scenes never appear there). The loss has two terms (see contrastive.py): SigLIP over whole
captions with one hard-negative caption per image, and a CLIP-style term matching the tokens under
each annotated box to the object's name.

Writes a directory that loads like a released SigLIP vision tower: ``SiglipVisionModel``
weights and config plus a ``SiglipImageProcessor`` (64 px, mean = std = 0.5).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SiglipImageProcessorPil

from llavakit.quickstart import runtime
from llavakit.quickstart.contrastive import (
    CaptionVocab,
    DualEncoder,
    HardNegatives,
    box_weights,
    contrastive_loss,
    to_pixel_values,
)
from llavakit.quickstart.probe import run_probes
from llavakit.quickstart.settings import ComponentSettings, VisionSettings
from llavakit.quickstart.world_data import (
    CaptionedImages,
    captioned_images,
    read_manifest,
)
from llavakit.synth.settings import WorldSettings
from llavakit.synth.tasks_single import hires_geometry

# LLaVA reads hidden_states[FEATURE_LAYER]; the contrastive head pools the last layer, so -1 holds
# the trained features (OneVision likewise reads the last layer it keeps).
FEATURE_LAYER = -1
NO_DECAY = ("position_embedding", "text.words", "text.positions")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: biases, norms, the temperature and lookup tables stay undecayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            plain = param.ndim < 2 or any(part in name for part in NO_DECAY)
            (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Batch:
    images: torch.Tensor  # (B, S, S, 3) uint8
    texts: torch.Tensor  # (2B, L) caption ids: the true captions, then their hard negatives
    positives: torch.Tensor  # (B, 2B) bool: column j's text is image i's caption
    box_image: torch.Tensor  # (R,) which image of the batch each box is in
    box_weights: torch.Tensor  # (R, T) area share of the box in each patch
    box_names: torch.Tensor  # (R,) index into the world's object names

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))


class CaptionBatches:
    """Seeded batches: each image with one of its captions (chosen afresh each time), one hard
    negative caption per image, and the image's boxes with their object names."""

    def __init__(self, data: CaptionedImages, vocab: CaptionVocab, grid: int, generator: torch.Generator):
        self.pixels = torch.from_numpy(data.pixels)
        flat = sorted({c for caps in data.captions for c in caps})
        self.tokens = vocab.encode(flat)  # (C, L)
        index = {c: i for i, c in enumerate(flat)}
        self.choices = [[index[c] for c in caps] for caps in data.captions]
        self.names = sorted({name for boxes in data.boxes for name, _ in boxes})
        self.name_tokens = vocab.encode(self.names)  # (K, L)
        name_index = {n: i for i, n in enumerate(self.names)}
        self.box_names = [torch.tensor([name_index[n] for n, _ in boxes], dtype=torch.long) for boxes in data.boxes]
        weights = box_weights([b for boxes in data.boxes for _, b in boxes], grid)  # all boxes at once
        self.box_weights = list(weights.split([len(boxes) for boxes in data.boxes]))
        self.negatives = HardNegatives(vocab)
        self.generator = generator
        self.order: list[int] = []

    def next(self, batch_size: int) -> Batch:
        while len(self.order) < batch_size:  # epochs, each a fresh permutation
            self.order += torch.randperm(len(self.pixels), generator=self.generator).tolist()
        picks, self.order = self.order[:batch_size], self.order[batch_size:]
        caption_ids = [self.choices[i][int(torch.randint(len(self.choices[i]), (1,), generator=self.generator))]
                       for i in picks]
        true = self.tokens[caption_ids]
        true = true[:, : int((true != 0).sum(1).max())]  # trim padding columns
        texts = torch.cat([true, self.negatives(true, self.generator)])
        positives = (true[:, None, :] == texts[None, :, :]).all(-1)  # same text, wherever it came from
        box_image = torch.cat([torch.full((len(self.box_names[i]),), k) for k, i in enumerate(picks)])
        return Batch(self.pixels[picks], texts, positives, box_image,
                     torch.cat([self.box_weights[i] for i in picks]), torch.cat([self.box_names[i] for i in picks]))


def batch_loss(model: DualEncoder, batch: Batch, names: torch.Tensor, vision: VisionSettings) -> torch.Tensor:
    tokens = model.patch_tokens(to_pixel_values(batch.images))
    captions = model.caption_logits(model.image_embeddings(tokens), model.text_embeddings(batch.texts))
    loss = contrastive_loss(captions, batch.positives, vision.loss)
    if vision.region_weight > 0 and len(batch.box_names):
        regions = model.region_embeddings(tokens, batch.box_image, batch.box_weights)
        logits = model.region_logits(regions, model.text_embeddings(names))
        loss = loss + vision.region_weight * F.cross_entropy(logits, batch.box_names)
    if vision.token_weight > 0 and len(batch.box_names):
        logits = model.token_logits(tokens, batch.box_image, model.text_embeddings(names))  # (R, T, K)
        targets = batch.box_names[:, None].expand(logits.shape[:2])  # (R, T): every token, its box's name
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (R, T)
        loss = loss + vision.token_weight * (per_token * batch.box_weights).sum(1).mean()
    if vision.position_weight > 0:
        loss = loss + vision.position_weight * model.position_loss(tokens)
    return loss


def train_vision(world_dir: Path, out_dir: Path, settings: ComponentSettings, progress: bool = True) -> dict:
    """Train the tower, save it to ``out_dir``, and return its metrics (loss, probes, seconds)."""
    start = time.perf_counter()
    vision = settings.vision
    device = runtime.pick_device(settings.device)
    generator = runtime.seed_everything(settings.seed)
    data = captioned_images(world_dir, vision.image_size)
    vocab = CaptionVocab([c for caps in data.captions for c in caps] + [n for boxes in data.boxes for n, _ in boxes])
    batches = CaptionBatches(data, vocab, vision.image_size // vision.patch_size, generator)
    model = DualEncoder(vision, len(vocab), max_words=batches.tokens.shape[1]).to(device)
    untrained_tower = copy.deepcopy(model.tower)
    optimizer = torch.optim.AdamW(_param_groups(model, vision.weight_decay), lr=vision.lr, betas=(0.9, 0.98))
    steps = settings.steps(vision.steps)
    batch_size = min(vision.batch_size, len(data.pixels))
    names = batches.name_tokens.to(device)

    losses = []
    model.train()
    with runtime.progress_bar(steps, "vision tower (contrastive)", progress) as bar:
        for step in range(steps):
            runtime.set_lr(optimizer, runtime.cosine_lr(step, steps, vision.lr, vision.warmup_fraction))
            loss = batch_loss(model, batches.next(batch_size).to(device), names, vision)
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
    world = read_manifest(world_dir)["settings"]
    towers = {"trained": model.tower, "untrained": untrained_tower.to(device)}
    _, letter_cell = hires_geometry(WorldSettings.from_dict(world))
    probes, shares = run_probes(towers, vision.probe_images, vision.image_size, settings.seed, world["max_objects"],
                                FEATURE_LAYER, device, grid=world.get("grid", 0), letter_cell=letter_cell)
    return {
        "images": len(data.pixels),
        "captions": len(batches.tokens),
        "object_names": len(batches.names),
        "steps": steps,
        "batch_size": batch_size,
        "initial_loss": round(losses[0], 4),
        "final_loss": round(float(np.mean(losses[-10:])), 4),
        "loss_curve": runtime.loss_curve(losses),
        "feature_layer": FEATURE_LAYER,
        "probe": probes,
        "position_share": shares,
        "train_seconds": round(train_seconds, 2),
        "probe_seconds": round(time.perf_counter() - probe_start, 2),
        "device": device.type,
    }


def _save_tower(tower: torch.nn.Module, image_size: int, out_dir: Path) -> None:
    tower.eval().save_pretrained(str(out_dir))
    SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_resize=True, resample=3,  # bicubic, as llavakit's processor squashes
    ).save_pretrained(str(out_dir))
