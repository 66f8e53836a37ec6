"""`llavakit demo`: a tiny LLaVA-OneVision end to end, checked against transformers.

Builds a tiny random transformers checkpoint, loads it with llavakit, answers questions about
generated images (single image, two images, text only), exports it back to the transformers
layout, and confirms that transformers' own model gives the same logits and tokens. Writes a JSON
report. Used as the main job until the quickstart trains a real model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory")


def _image(height: int, width: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    import llavakit
    from llavakit.tiny.checkpoints import build_onevision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = build_onevision(out / "tiny-onevision")
    model = llavakit.load(source)
    cases = {
        "single image 1920x1080": [_image(1080, 1920, 0)],
        "two images": [_image(300, 200, 1), _image(120, 480, 2)],
        "text only": [],
    }
    exported = model.export(out / "exported")
    reference = LlavaOnevisionForConditionalGeneration.from_pretrained(exported).eval()
    rows = []
    for name, images in cases.items():
        conversation = [{"role": "user", "content": [{"type": "image", "image": im} for im in images]
                         + [{"type": "text", "text": "What do you see?"}]}]
        result = model.generate(conversation, max_new_tokens=8)
        inputs = model.prepare([conversation])
        with torch.no_grad():
            ours = model.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.visual_items).logits
            extra = {}
            if images:
                extra = {"pixel_values": inputs.pixel_values[None] if len(images) == 1 else inputs.pixel_values[:, None],
                         "image_sizes": torch.tensor([[im.height, im.width] for im in images]),
                         "batch_num_images": torch.tensor([len(images)])}
            theirs = reference(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, **extra).logits
        rows.append({"case": name, "prompt_tokens": result.prompt_tokens, "new_tokens": len(result.token_ids),
                     "max_abs_logit_diff_vs_transformers": float((ours - theirs).abs().max())})
    report = {"model": str(source), "exported": str(exported), "cases": rows,
              "seconds": round(time.perf_counter() - started, 2)}
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':<24} {'prompt tokens':>13} {'new tokens':>10} {'max |logit diff| vs transformers':>34}")
    for row in rows:
        print(f"{row['case']:<24} {row['prompt_tokens']:>13} {row['new_tokens']:>10} "
              f"{row['max_abs_logit_diff_vs_transformers']:>34.2e}")
    print(f"report: {out / 'demo.json'} ({report['seconds']} s)")
    worst = max(r["max_abs_logit_diff_vs_transformers"] for r in rows)
    return 0 if worst < 1e-4 else 1
