"""Peak memory of real training steps on CPU (fp32, AdamW), run in a fresh process by
tests/test_plan.py: the memory model of `llavakit plan` is checked against it.

    python tests/plan_memory_probe.py SPEC_JSON   ->   prints {"peak_bytes": ..., "tokens": ...}

SPEC: {"config": LlavaConfig data, "rules": [ParamRule data], "batch": B, "text": T,
"checkpointing": bool, "accumulation": micro-batches per optimizer step}. Each row is one image (its placeholder tokens) followed by T text tokens,
all labelled. The peak is the process's maximum resident set size during two optimizer steps, less
its resident size just before the model is built (the libraries' share).
"""

from __future__ import annotations

import json
import resource
import sys


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    """This process's resident high-water mark (VmHWM). Not getrusage's ru_maxrss: on Linux a child
    started by fork keeps its parent's maximum there, so a large test runner would set the peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(spec: dict) -> dict:
    import torch

    from llavakit import layout
    from llavakit.config import validate
    from llavakit.model.llava import LlavaForCausalLM
    from llavakit.train.config import ParamRule
    from llavakit.train.params import assign, param_groups

    def train_steps(config_data: dict, batch: int, text: int, steps: int) -> int:
        """Build the model, run ``steps`` optimizer steps; the tokens of a row."""
        torch.manual_seed(0)
        config = validate(config_data)
        visual, side = config.visual, config.tokens_per_side
        item = layout.plan_image(visual, (visual.crop_size, visual.crop_size), multi_image=False)
        image_tokens = layout.token_count(item, visual, side)
        ids = torch.randint(0, config.image_token_id, (batch, image_tokens + text))
        ids[:, :image_tokens] = config.image_token_id
        pixels = torch.randn(batch * item.num_crops, 3, visual.crop_size, visual.crop_size)
        model = LlavaForCausalLM.from_config(config)
        if spec.get("checkpointing"):
            model.language_model.gradient_checkpointing_enable({"use_reentrant": False})
            if hasattr(model.vision_tower, "gradient_checkpointing_enable"):
                model.vision_tower.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        groups = param_groups(model, assign(model, [ParamRule(**rule) for rule in spec["rules"]], 1e-4, 0.0))
        for group in groups:
            group.pop("names")
        optimizer = torch.optim.AdamW(groups)
        for _ in range(steps):
            for _ in range(spec.get("accumulation", 1)):  # micro-batches per optimizer step
                output = model(ids, pixel_values=pixels, visual_items=[item] * batch, labels=ids)
                output.loss.backward()
                del output
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return image_tokens + text

    # One step of a model a hundredth the size first: the lazily imported modules, kernels and thread
    # pools of the first step are the libraries' share, not the model's.
    llm = spec["config"]["llm"]["hf_config"]
    small = {**spec["config"], "llm": {"hf_config": {**llm, "hidden_size": 64, "intermediate_size": 128,
                                                      "num_hidden_layers": 1}}}
    train_steps(small, 1, 8, 1)
    before = resident_bytes()
    tokens = train_steps(spec["config"], spec["batch"], spec["text"], 2)
    peak = peak_resident_bytes()
    return {"peak_bytes": peak - before, "tokens": tokens}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
