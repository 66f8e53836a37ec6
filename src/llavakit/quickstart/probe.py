"""Linear probes on the vision tower: can a linear map read colour, shape, position, count and a
tiny letter?

Probe scenes are drawn fresh with the world's own drawing code and a seed stream of their own, so
they are held out from the tower's training images. Features are the tower's hidden states at the
layer LLaVA reads. Colour and shape are read from the tokens under the object (area-weighted, as
LLaVA's language model can attend to them); count from the mean of all tokens; position from all
tokens side by side, since LLaVA gets position from which tokens (in row-major order) show what; the
letter from its own token. The same probe on the untrained tower is the baseline that shows what
training added (colour is easy even for random weights; shape is not; the letter is hardly more
readable after training than before).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llavakit.quickstart.contrastive import box_weights, to_pixel_values
from llavakit.synth import vocab
from llavakit.synth.render import draw_scene
from llavakit.synth.scene import (
    Spec,
    distinct_specs,
    place_until_fits,
    position_word,
    random_spec,
)

POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
PROBE_STREAM = 104729  # keeps probe scenes apart from every stream the world generator uses


# Each probe: (the label it reads, the token pooling it reads it from). "shape_token" reads shape
# from the one token most covered by the object: what a single LLaVA token carries on its own. A
# tower can carry shape when its tokens are pooled and still not in any one token, and the
# quickstart's LM, which reads tokens one by one, then stays at chance on shape (see
# VisionSettings.token_weight).
PROBES = {
    "color": ("color", "object"),
    "shape": ("shape", "object"),
    "shape_token": ("shape", "center"),
    "position": ("position", "grid"),
    # where the object is, from its own token alone: what the LM gets when it attends to the object
    "position_token": ("position", "center"),
    "count": ("count", "mean"),
    # the tiny letter of a large image's crop (the detail task's letter), from its own token: what
    # the LM gets when it finds the letter. Each letter is drawn at any place in its cell, so this
    # asks for more than a linear read of the pixels.
    "letter_token": ("letter", "center"),
}


@dataclass
class ProbeSet:
    pixels: np.ndarray  # (N, S, S, 3) uint8
    labels: dict[str, np.ndarray]  # task -> (N,) class ids
    classes: dict[str, int]  # task -> number of classes
    boxes: list[tuple[float, float, float, float]] | None = None  # the one object's box, 0..1 (single-object sets)


def single_object_scenes(n: int, side: int, seed: int, split: int, grid: int = 0) -> ProbeSet:
    """One object per image (placed as the world places it, see scene.place): its colour, shape
    and 3x3 position cell."""
    rng = np.random.default_rng([seed, PROBE_STREAM, split, 0])
    colors, shapes = list(vocab.COLORS), list(vocab.SHAPES)
    pixels, boxes, labels = [], [], {"color": [], "shape": [], "position": []}
    for _ in range(n):
        scene = place_until_fits(rng, [random_spec(rng)], side, grid=grid)
        obj = scene.objects[0]
        boxes.append(tuple(v / side for v in obj.box))
        pixels.append(np.asarray(draw_scene(scene)))
        labels["color"].append(colors.index(obj.color))
        labels["shape"].append(shapes.index(obj.shape))
        labels["position"].append(POSITIONS.index(position_word(obj, side)))
    classes = {"color": len(colors), "shape": len(shapes), "position": len(POSITIONS)}
    return ProbeSet(np.stack(pixels), {k: np.array(v) for k, v in labels.items()}, classes, boxes)


def tiny_letter_scenes(n: int, side: int, seed: int, split: int, letter_cell: int = 1, grid: int = 0) -> ProbeSet:
    """One tiny letter per image, as a crop of a detail image shows it at its own resolution
    (letter_cell px per glyph cell), in a random colour: which letter it is."""
    rng = np.random.default_rng([seed, PROBE_STREAM, split, 2])
    colors, letters = list(vocab.COLORS), list(vocab.LETTERS)
    pixels, boxes, labels = [], [], []
    for i in range(n):
        letter = letters[i % len(letters)]  # balanced classes
        spec = Spec("letter", colors[int(rng.integers(len(colors)))], "tiny", letter=letter)
        scene = place_until_fits(rng, [spec], side, letter_cell=letter_cell, grid=grid)
        boxes.append(tuple(v / side for v in scene.objects[0].box))
        pixels.append(np.asarray(draw_scene(scene)))
        labels.append(letters.index(letter))
    return ProbeSet(np.stack(pixels), {"letter": np.array(labels)}, {"letter": len(letters)}, boxes)


def count_scenes(n: int, side: int, seed: int, split: int, max_objects: int, grid: int = 0) -> ProbeSet:
    """1..max_objects distinct objects per image (names unique, as in the world)."""
    rng = np.random.default_rng([seed, PROBE_STREAM, split, 1])
    pixels, counts = [], []
    for i in range(n):
        count = 1 + i % max_objects  # balanced classes
        pixels.append(np.asarray(draw_scene(place_until_fits(rng, distinct_specs(rng, count), side, grid=grid))))
        counts.append(count - 1)
    return ProbeSet(np.stack(pixels), {"count": np.array(counts)}, {"count": max_objects})


@torch.no_grad()
def pooled_features(tower: nn.Module, probe_set: ProbeSet, layer: int, device: torch.device,
                    batch: int = 256) -> dict[str, torch.Tensor]:
    """{"mean": (N, H), "grid": (N, T * H), "object": (N, H), "center": (N, H)} from hidden_states[layer],
    which LLaVA reads ("object" and "center" only for sets with boxes)."""
    tower.eval()
    tokens = []
    for start in range(0, len(probe_set.pixels), batch):
        images = torch.from_numpy(probe_set.pixels[start : start + batch]).to(device)
        out = tower(pixel_values=to_pixel_values(images), output_hidden_states=True)
        tokens.append(out.hidden_states[layer].float().cpu())
    states = torch.cat(tokens)  # (N, T, H)
    features = {"mean": states.mean(1), "grid": states.flatten(1)}
    if probe_set.boxes is not None:
        weights = box_weights(probe_set.boxes, round(states.shape[1] ** 0.5))  # (N, T)
        features["object"] = (weights[:, :, None] * states).sum(1)
        features["center"] = states[torch.arange(len(states)), weights.argmax(1)]
    return features


def linear_probe_accuracy(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray,
                          classes: int, steps: int = 300) -> float:
    """Multinomial logistic regression on standardised features (full-batch Adam), test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, xt = (train_x - mean) / std, (test_x - mean) / std
    y = torch.from_numpy(train_y).long()
    generator = torch.Generator().manual_seed(0)
    head = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        return float((head(xt).argmax(1).numpy() == test_y).mean())


def run_probes(towers: dict[str, nn.Module], n: int, side: int, seed: int, max_objects: int, layer: int,
               device: torch.device, grid: int = 0, letter_cell: int = 1
               ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """({task: {tower name: test accuracy, ..., "chance": 1 / classes}} for each probe task,
    {tower name: position share}). The position share is the share of the object's own token's
    variance that its 3x3 position explains (test scenes of one object). A linear probe reads place
    from a small share; the LM learned to name an object's column only once the share was large
    (VisionSettings.position_weight)."""
    sets = [
        (single_object_scenes(n, side, seed, 0, grid), single_object_scenes(n, side, seed, 1, grid)),
        (count_scenes(n, side, seed, 0, max_objects, grid), count_scenes(n, side, seed, 1, max_objects, grid)),
        (tiny_letter_scenes(n, side, seed, 0, letter_cell, grid), tiny_letter_scenes(n, side, seed, 1, letter_cell, grid)),
    ]
    results: dict[str, dict[str, float]] = {}
    shares: dict[str, float] = {}
    for train, test in sets:
        probes = {probe: (label, pool) for probe, (label, pool) in PROBES.items() if label in train.labels}
        for probe, (label, _) in probes.items():
            results[probe] = {"chance": round(1 / train.classes[label], 4)}
        for name, tower in towers.items():
            train_x = pooled_features(tower, train, layer, device)
            test_x = pooled_features(tower, test, layer, device)
            for probe, (label, pool) in probes.items():
                accuracy = linear_probe_accuracy(train_x[pool], train.labels[label], test_x[pool], test.labels[label],
                                                 train.classes[label])
                results[probe][name] = round(accuracy, 4)
            if "position" in test.labels:
                shares[name] = round(label_variance_share(test_x["center"], test.labels["position"]), 4)
    return results, shares


def label_variance_share(features: torch.Tensor, labels: np.ndarray) -> float:
    """The share of the features' variance that the class means of ``labels`` explain (between-class
    over total variance): how much of what a token carries is that label."""
    centred = features - features.mean(0)
    total = centred.pow(2).sum(1).mean()
    between = sum(centred[labels == c].mean(0).pow(2).sum() * float((labels == c).mean()) for c in np.unique(labels))
    return float(between / total)

