"""Benchmark: images per second through our image processing vs transformers' processors (CPU).

OneVision settings (SigLIP-384 crops, (1x1)..(6x6) pinpoints, mean = std = 0.5) on generated
images of three kinds: 1080p photos, document pages (text rendered with PIL) and tiny images. For
every image our pixels must equal transformers' PIL processor bit for bit (the run stops
otherwise); transformers' torchvision-backed processor, when torchvision is importable, is timed
too and its largest difference from the PIL reference is reported (it resamples differently).

    python bench/preprocess.py                        # single-threaded and a thread pool of os.cpu_count()
    python bench/preprocess.py --threads 8 --repeats 5 --out runs/bench/preprocess.json
    python bench/preprocess.py --before HEAD          # also time processing/image.py as of a git revision

"ours" is ``LlavaProcessor.image_pixels`` (open, plan, views, normalise); the baselines are
``LlavaOnevisionImageProcessorPil(images=[image])`` and ``LlavaOnevisionImageProcessor`` with the
same settings. Images are decoded PIL RGB images for all contenders (decoding is not timed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CROP = 384
WORDS = ["the", "model", "reads", "a", "page", "of", "text", "at", "high", "resolution", "so", "each", "crop", "keeps", "small", "glyphs", "legible", "tables", "figures", "and", "captions", "grid", "pinpoints", "anyres", "tokens", "vision", "tower", "projector"]


# ---- the images -------------------------------------------------------------------------------------
def photo(seed: int, size: tuple[int, int] = (1080, 1920)) -> Image.Image:
    """Photo-like: a smooth colour field, a few shapes, sensor noise. ``size`` is (height, width)."""
    rng = np.random.default_rng(seed)
    height, width = size
    field = Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(1, max(2, width // 4))), int(rng.integers(1, max(2, height // 4)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=color)
    noisy = np.asarray(field, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def document(seed: int, size: tuple[int, int] = (2200, 1700)) -> Image.Image:
    """A letter page at 200 dpi: a title, paragraphs of small text, a ruled table."""
    rng = np.random.default_rng(seed)
    height, width = size
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    title, body = ImageFont.load_default(size=56), ImageFont.load_default(size=22)
    draw.text((120, 100), f"Report {seed}: results", fill=(0, 0, 0), font=title)
    y = 220
    while y < height - 500:
        line = " ".join(rng.choice(WORDS, int(rng.integers(10, 16))))
        draw.text((120, y), line, fill=(20, 20, 20), font=body)
        y += 34 if rng.random() > 0.15 else 60
    for row in range(6):  # a table
        top = height - 460 + row * 60
        draw.line((120, top, width - 120, top), fill=(0, 0, 0), width=2)
        for col in range(4):
            draw.text((140 + col * (width - 240) // 4, top + 16), f"{rng.integers(0, 1000)}.{row}{col}",
                      fill=(0, 0, 90), font=body)
    return page


def tiny(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    height, width = [(15, 20), (32, 32), (24, 64), (48, 40)][seed % 4]
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_sets(photos: int, documents: int, tinies: int) -> dict[str, list[Image.Image]]:
    sets = {
        "photo 1920x1080": [photo(i) for i in range(photos)],
        "document 1700x2200": [document(i) for i in range(documents)],
        "tiny <=64 px": [tiny(i) for i in range(tinies)],
    }
    return {name: images for name, images in sets.items() if images}


# ---- the contenders -------------------------------------------------------------------------------
def onevision_config():
    from llavakit.config import LlavaConfig

    return LlavaConfig.model_validate({
        "vision": {"hf_config": {"model_type": "siglip_vision_model", "image_size": CROP, "patch_size": 14,
                                 "hidden_size": 32}},
        "llm": {"hf_config": {"model_type": "qwen2", "hidden_size": 32}},
        "visual": {"crop_size": CROP, "grid_pinpoints": "(1x1),...,(6x6)", "max_grids": 9},
    })


def ours() -> Callable[[Image.Image], np.ndarray]:
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.tiny.tokenizer import train_bpe_tokenizer

    processor = LlavaProcessor(onevision_config(), train_bpe_tokenizer())
    return lambda image: processor.image_pixels(image)[1]


def ours_at(revision: str) -> Callable[[Image.Image], np.ndarray]:
    """processing/image.py as of a git revision (the rest of llavakit as it is now)."""
    from llavakit import layout

    source = subprocess.run(["git", "show", f"{revision}:src/llavakit/processing/image.py"], cwd=common.ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "image_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("image_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    visual = onevision_config().visual

    def run(image: Image.Image) -> np.ndarray:
        picture = module.open_image(image, visual.max_image_pixels)
        item = layout.plan_image(visual, (picture.height, picture.width), False)
        return module.normalize(module.views_for(picture, item, visual, False), visual)

    return run


def _hf_settings() -> dict[str, Any]:
    from llavakit.tiny import checkpoints

    return {"size": {"height": CROP, "width": CROP}, "image_grid_pinpoints": checkpoints.onevision_pinpoints(CROP),
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def transformers_pil() -> Callable[[Image.Image], np.ndarray]:
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    processor = LlavaOnevisionImageProcessorPil(**_hf_settings())
    return lambda image: processor(images=[image], return_tensors="np")["pixel_values"][0]


def transformers_torchvision(device: str) -> tuple[Callable[[Image.Image], np.ndarray] | None, str]:
    """transformers' fastest (torchvision-backed) processor, or None and why it is unavailable."""
    try:
        import torchvision
        from transformers.models.llava_onevision.image_processing_llava_onevision import (
            LlavaOnevisionImageProcessor,
        )
    except ImportError as err:
        return None, f"unavailable: {err}"
    processor = LlavaOnevisionImageProcessor(**_hf_settings())

    def run(image: Image.Image) -> np.ndarray:
        out = processor(images=[image], return_tensors="pt", device=device)["pixel_values"][0]
        return out.cpu().numpy()

    return run, f"torchvision {torchvision.__version__} on {device}"


# ---- measuring ------------------------------------------------------------------------------------
def rate(fn: Callable, images: list[Image.Image], pool: ThreadPoolExecutor | None) -> Callable[[], None]:
    if pool is None:
        return lambda: [fn(image) for image in images]
    return lambda: list(pool.map(fn, images))


def check_outputs(contenders: dict[str, Callable], reference: str, sets: dict[str, list[Image.Image]],
                  exact: set[str]) -> dict[str, dict[str, float]]:
    """Largest |difference| from the reference per contender and set; contenders in ``exact`` must be 0."""
    diffs: dict[str, dict[str, float]] = {name: {} for name in contenders}
    for set_name, images in sets.items():
        for image in images:
            expected = contenders[reference](image)
            for name, fn in contenders.items():
                got = fn(image)
                if got.shape != expected.shape:
                    raise AssertionError(f"{name} on {set_name} {image.size}: shape {got.shape} != {expected.shape}")
                diff = float(np.abs(got.astype(np.float64) - expected).max())
                diffs[name][set_name] = max(diffs[name].get(set_name, 0.0), diff)
                if name in exact and not np.array_equal(got, expected):
                    raise AssertionError(f"{name} on {set_name} {image.size}: pixels differ from {reference} "
                                         f"(max |diff| {diff})")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--documents", type=int, default=2)
    parser.add_argument("--tiny", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender (interleaved)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="thread-pool size (0: skip)")
    parser.add_argument("--before", default=None, help="also time processing/image.py at this git revision")
    parser.add_argument("--tv-device", default="cpu", help="device for the torchvision-backed processor")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    sets = image_sets(args.photos, args.documents, args.tiny)
    contenders: dict[str, Callable] = {"ours": ours(), "transformers PIL": transformers_pil()}
    if args.before:
        contenders[f"ours@{args.before}"] = ours_at(args.before)
    torchvision_fn, torchvision_note = transformers_torchvision(args.tv_device)
    if torchvision_fn is not None:
        contenders["transformers torchvision"] = torchvision_fn
    exact = {name for name in contenders if name != "transformers torchvision"}
    diffs = check_outputs(contenders, "transformers PIL", sets, exact)

    modes = [("1 thread", None)] + ([(f"pool of {args.threads}", args.threads)] if args.threads else [])
    rows = []
    for mode, workers in modes:
        pool = ThreadPoolExecutor(workers) if workers else None
        for set_name, images in sets.items():
            # Every contender has already run on every image (the output check): no further warm-up.
            timings = common.interleaved({name: rate(fn, images, pool) for name, fn in contenders.items()},
                                         warmup=0, repeats=args.repeats)
            per_s = {name: len(images) / t.median for name, t in timings.items()}
            baseline = per_s.get("transformers torchvision", per_s["transformers PIL"])
            row = {"mode": mode, "images": set_name, "ours img/s": per_s["ours"],
                   "transformers PIL img/s": per_s["transformers PIL"],
                   "ours / PIL": common.ratio(per_s["ours"], per_s["transformers PIL"]),
                   "transformers torchvision img/s": per_s.get("transformers torchvision"),
                   "ours / torchvision": common.ratio(per_s["ours"], per_s.get("transformers torchvision")),
                   "identical to PIL": diffs["ours"][set_name] == 0.0}
            if args.before:
                key = f"ours@{args.before}"
                row[f"{key} img/s"] = per_s[key]
                row[f"ours / ours@{args.before}"] = common.ratio(per_s["ours"], per_s[key])
            row["timings"] = {name: t.as_dict() for name, t in timings.items()}
            row["best baseline img/s"] = baseline
            rows.append(row)
        if pool is not None:
            pool.shutdown()

    env = common.environment()
    columns = [c for c in rows[0] if c not in ("timings", "best baseline img/s")]
    settings = vars(args) | {"crop": CROP, "pinpoints": "(1x1),...,(6x6)", "torchvision": torchvision_note,
                             "max_abs_diff_vs_pil": diffs}
    common.report("preprocess", env, rows, columns, args.out, settings)
    if torchvision_fn is None:
        print(f"transformers torchvision processor: {torchvision_note}")
    else:
        print(f"torchvision max |diff| vs PIL: {diffs['transformers torchvision']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
