"""The seeds' real models as recipes, and `llavakit plan`: parameter counts against the model cards,
visual tokens, trainable parts per stage, data paths as overrides, and the memory model against the
measured peak of real training steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.recipe.load import RECIPES_DIR
from llavakit.recipe.model_recipe import load_model_recipe, train_configs
from llavakit.recipe.schema import RecipeError
from llavakit.train.config import build_config

SHIPPED = ["llava-1.5-7b", "llava-1.5-13b", "llava-next-7b", "llava-next-13b", "llava-next-34b",
           "llava-next-llama3-8b", "llava-next-72b", "llava-next-110b", "llava-onevision-0.5b",
           "llava-onevision-7b", "llava-onevision-72b", "llava-next-interleave-7b"]
M, B = 1e6, 1e9
MI = 2 ** 20  # the 2405 model card writes connector sizes in units of 2**20 (20.0M = 20,979,712 parameters)

# The model cards of seed 000 (LLaVA-NeXT 2401 and 2405) and its 0.5B configuration (2406 blog).
MODEL_CARDS = {
    "llava-next-7b": {"vision": 303.5 * M, "projector": 21 * M, "llm": 6.74 * B, "total": 7.06 * B},
    "llava-next-13b": {"vision": 303.5 * M, "projector": 31.5 * M, "llm": 13 * B, "total": 13.35 * B},
    "llava-next-34b": {"vision": 303.5 * M, "projector": 58.7 * M, "llm": 34.39 * B, "total": 34.75 * B},
    "llava-next-llama3-8b": {"vision": 303.5 * M, "projector": 20.0 * MI, "llm": 8.03 * B, "total": 8.35 * B},
    "llava-next-72b": {"vision": 303.5 * M, "projector": 72.0 * MI, "llm": 72.3 * B, "total": 72.7 * B},
    "llava-next-110b": {"vision": 303.5 * M, "projector": 72.0 * MI, "llm": 111.0 * B, "total": 111.5 * B},
    "llava-onevision-0.5b": {"total": 0.9 * B},
}


def plan_json(capsys, *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_twelve_recipes_are_shipped_and_the_link_reaches_them():
    assert sorted(SHIPPED) == sorted(p.stem for p in RECIPES_DIR.glob("llava-*.yaml"))
    assert (Path(__file__).parents[1] / "recipes" / "llava-next-7b.yaml").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_validates_and_gives_train_configs(name, tmp_path):
    recipe = load_model_recipe(name)
    config = recipe.llava_config()
    assert config.vision.pretrained and config.llm.pretrained  # the parts by hub id
    assert config.vision.hf_config and config.llm.hf_config  # ... and their architectures
    stages = recipe.enabled_stages()
    assert stages[0].start == "parts" and all(stage.data is None for stage in stages)
    overrides = [f"stages.{stage.name}.data=/data/{stage.name}.jsonl" for stage in stages]
    configs = train_configs(load_model_recipe(name, overrides), tmp_path)
    for stage in stages:
        train = build_config(configs[stage.name], f"{name}:{stage.name}")
        assert [s.path for s in train.data.sources] == [f"/data/{stage.name}.jsonl"]
    first = configs[stages[0].name]["model"]["build"]
    assert first["llm"]["pretrained"] == config.llm.pretrained
    assert configs[stages[1].name]["model"] == {"checkpoint": str(tmp_path / stages[0].name / "model")}


@pytest.mark.parametrize("name", sorted(MODEL_CARDS))
def test_planned_parameters_equal_the_model_cards_within_one_percent(name, capsys):
    planned = plan_json(capsys, f"recipes/{name}.yaml" if name == "llava-next-7b" else name)["params"]
    assert planned["total"] == planned["vision"] + planned["projector"] + planned["llm"]
    for part, card in MODEL_CARDS[name].items():
        assert planned[part] == pytest.approx(card, rel=0.01), (name, part, planned[part], card)


def test_a_stage_needs_its_data_given_by_name(tmp_path):
    with pytest.raises(RecipeError, match=r"stages\.stage1\.data: no data; give yours with --set stages\.stage1\.data"):
        train_configs(load_model_recipe("llava-1.5-7b"), tmp_path)
    recipe = load_model_recipe("llava-1.5-7b", ["stages.stage1.data={path: /d/558k.json, image_folder: /d/img}",
                                                "stages.stage2.data=/d/665k.json"])
    configs = train_configs(recipe, tmp_path)
    assert configs["stage1"]["data"]["sources"] == [{"path": "/d/558k.json", "image_folder": "/d/img"}]
    assert configs["stage1"]["data"]["settings"] == {"template": "plain", "max_length": 2048}


def test_recipes_that_cannot_plan_are_refused_in_one_line(tmp_path, capsys):
    assert main(["plan", "quickstart"]) == 2
    assert "not a recipe of a real model" in capsys.readouterr().err
    assert main(["recipe", "check", "llava-next-7b"]) == 2
    assert "a real model's recipe (its parts by hub id)" in capsys.readouterr().err
    assert main(["plan", "llava-1.5-7b", "--set", "model.llm.hf_config=null"]) == 2
    assert "model.llm needs both pretrained (the hub id the stage-1 build loads) and hf_config" in capsys.readouterr().err
    assert main(["plan", "llava-1.5-7b", "--set", "model.visual.crop_sise=336"]) == 2
    err = capsys.readouterr().err
    assert "model.visual.crop_sise: Extra inputs are not permitted" in err and err.count("\n") == 1
    assert main(["plan", "llava-1.5-7b", "--stage", "stage9"]) == 2
    assert "stage 'stage9': not a stage that runs" in capsys.readouterr().err
    assert main(["plan", "llava-1.5-7b", "--set", "stages.stage2.train.trainable=[{pattern: ., frozen: true}]"]) == 2
    assert "stages.stage2.train.trainable: every module is frozen" in capsys.readouterr().err


def test_visual_tokens_per_medium_at_the_recipes_settings(capsys):
    # LLaVA-1.5: one 336 px crop, 24 x 24 tokens; no video.
    assert plan_json(capsys, "llava-1.5-7b")["tokens"] == {
        "largest_image": {"tokens": 576, "crops": 1, "size": [336, 336], "count": 1},
        "multi_image": {"tokens": 1152, "crops": 2, "size": [336, 336], "count": 2}}
    # NeXT-7B: the 4 x 1 canvas (1344 x 336): base 576 + a 96 x 24 map + 96 row newlines.
    largest = plan_json(capsys, "llava-next-7b")["tokens"]["largest_image"]
    assert (largest["tokens"], largest["crops"], largest["grid"]) == (576 + 96 * 24 + 96, 5, [4, 1])
    # OneVision: 12 images of 729 + 1 newline; 32 frames of 14 x 14 + 1 newline (docs/model.md).
    tokens = plan_json(capsys, "llava-onevision-7b")["tokens"]
    assert tokens["multi_image"]["tokens"] == 12 * 730 and tokens["video"]["tokens"] == 6273
    assert tokens["largest_image"]["tokens"] >= 1485 and tokens["largest_image"]["crops"] <= 37


def test_trainable_and_frozen_parts_follow_each_stages_rules(capsys):
    plan = plan_json(capsys, "llava-1.5-7b")
    params, stage1, stage2 = plan["params"], plan["trainable"]["stage1"], plan["trainable"]["stage2"]
    assert stage1 == {"vision": 0, "projector": params["projector"], "llm": 0, "total": params["projector"]}
    assert (stage2["vision"], stage2["llm"]) == (0, params["llm"])
    assert plan["frozen"]["stage2"]["vision"] == params["vision"]
    onevision = plan_json(capsys, "llava-onevision-0.5b", "--stage", "stage1_5")
    assert list(onevision["trainable"]) == ["stage1_5"]
    # the tower trains, less the post-layernorm the loop freezes (its output is never read)
    assert 0 < onevision["params"]["vision"] - onevision["trainable"]["stage1_5"]["vision"] < 10_000
    # LoRA on the LLM: its weights frozen, rank x (in + out) per adapted linear layer train
    lora = plan_json(capsys, "llava-1.5-7b", "--stage", "stage2", "--set", "stages.stage2.train.lora={rank: 8}")
    per_layer = 4 * 8 * (4096 + 4096) + 2 * 8 * (4096 + 11008) + 8 * (11008 + 4096)
    assert lora["trainable"]["stage2"]["llm"] == 32 * per_layer


def test_flops_follow_the_documented_rule(capsys):
    plan = plan_json(capsys, "llava-1.5-7b")
    hidden, layers, vocab = 4096, 32, 32000
    matmul = plan["params"]["llm"] - vocab * hidden  # the input embedding is a lookup
    for stage, weight_grads in (("stage1", 0), ("stage2", 2)):
        tokens = plan["sample"][stage]["tokens"]
        assert tokens == 576 + 256
        forward = 2 * matmul * tokens + 4 * layers * tokens ** 2 * hidden
        # backward: the input gradients (2·N·T, attention twice its forward), the weights' when trained
        expected = 2 * forward + weight_grads * matmul * tokens + 4 * layers * tokens ** 2 * hidden
        assert plan["flops"][stage]["llm"] == pytest.approx(expected, rel=1e-9)


def test_memory_modes_say_what_fits(capsys):
    roomy = plan_json(capsys, "llava-next-7b", "--stage", "stage2", "--gpu-memory", "10000")["memory"]["stage2"]
    assert all(mode["fits"] for mode in roomy["modes"].values())
    modes = plan_json(capsys, "llava-next-7b", "--stage", "stage2", "--gpus", "8")["memory"]["stage2"]["modes"]
    assert set(modes) == {"ddp", "fsdp", "lora", "ddp_checkpointing", "fsdp_checkpointing", "lora_checkpointing"}
    ddp, fsdp, lora = modes["ddp"], modes["fsdp"], modes["lora"]
    assert ddp["optimizer"] == pytest.approx(2 * ddp["gradients"], rel=0.01)  # AdamW: 8 B vs 4 B per trained param
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 8, rel=0.01)
    assert lora["optimizer"] < ddp["optimizer"] / 10
    assert modes["ddp_checkpointing"]["activations"] < ddp["activations"] / 3
    assert not ddp["fits"] and modes["fsdp_checkpointing"]["fits"]  # 7B full training on 80 GiB GPUs
    assert main(["plan", "llava-next-7b", "--stage", "stage2"]) == 0
    text = capsys.readouterr().out
    assert "fits: " in text and "fsdp_checkpointing" in text and "303.51M" in text


PROBE = Path(__file__).with_name("plan_memory_probe.py")
STAGE2 = [{"pattern": r"^vision_tower\.", "frozen": True}, {"pattern": "."}]
STAGE1 = [{"pattern": r"^(multi_modal_projector\.|image_newline$)"}, {"pattern": ".", "frozen": True}]


def probe_config(hidden: int, layers: int, intermediate: int, vocab: int) -> dict:
    return {
        "vision": {"hf_config": {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 256,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 64,
                                 "patch_size": 8}},
        "projector": {"type": "mlp2x_gelu"},
        "llm": {"hf_config": {"model_type": "qwen2", "hidden_size": hidden, "intermediate_size": intermediate,
                              "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "vocab_size": vocab, "tie_word_embeddings": False}},
        "visual": {"crop_size": 64, "image_mode": "squash", "image_newline": "image"},
        "image_token_id": vocab - 1, "video_token_id": vocab - 2,
    }


@pytest.mark.slow
@pytest.mark.parametrize("size, rules, checkpointing, accumulation", [
    ((256, 4, 1024, 8000), STAGE2, False, 1),
    ((384, 6, 1536, 16000), STAGE1, False, 1),
    ((384, 6, 1536, 16000), [{"pattern": "."}], True, 2),
], ids=["8M-stage2", "26M-stage1", "26M-full-checkpointing-accumulation"])
def test_memory_model_matches_the_measured_peak_of_real_steps_within_25_percent(size, rules, checkpointing,
                                                                                 accumulation):
    from llavakit.config import validate
    from llavakit.sizing import cost, params
    from llavakit.train.config import ParamRule
    from llavakit.train.params import assign, part_name

    spec = {"config": probe_config(*size), "rules": rules, "batch": 4, "text": 192, "checkpointing": checkpointing,
            "accumulation": accumulation}
    # glibc's fixed mmap threshold: freed tensors go back to the system, so the resident peak is the live peak
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(PROBE), json.dumps(spec)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])

    config = validate(spec["config"])
    model = params.meta_model(config)
    trained = {entry.name for entry in assign(model, [ParamRule(**rule) for rule in rules], 1e-4, 0.0)}
    counts = dict.fromkeys(params.PARTS, 0)
    for name, param in model.named_parameters():
        if name in trained:
            counts[part_name(name)] += param.numel()
    side = config.tokens_per_side
    sample = cost.Sample(measured["tokens"], 1, side * side, side * side)
    estimate = cost.memory(cost.model_shape(config, model), cost.Trainability(**counts), sample, micro_batch=4,
                           gpus=1, sharded=False, checkpointing=checkpointing, width=4,  # fp32 on CPU
                           accumulation=accumulation)
    assert estimate.total == pytest.approx(measured["peak_bytes"], rel=0.25), (estimate, measured)
