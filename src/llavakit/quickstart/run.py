"""`llavakit quickstart --out DIR`: the whole LLaVA recipe on a laptop CPU, for real.

1. generate the synthetic world (``llavakit synth``) unless it is already there;
2. train the tiny vision encoder and language model the stages start from (cached);
3. stage-1: align the projector on captions, parts frozen (``llavakit train``'s Trainer);
   stage-1.5: the whole model on detailed re-captions, then on listings of every object by colour
   and shape, then on grounding questions, then on listings of every object's side of the centre,
   then on relation questions answered side by side (each with listings replayed), then on motion
   clips (--no-motion-drill skips them);
4. stage-2: instruction-tune the whole model on the world's tasks;
5. evaluate every held-out task with the evaluation runner, print a table against chance;
6. write DIR/results.json, DIR/model/ (loadable, chat-able, servable) and DIR/report.md with plots.

The stage configs are written to DIR/configs/ so any stage can be rerun with ``llavakit train``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from llavakit.synth.world import (
    GROUNDING_FILE,
    LISTING_FILE,
    MOTION_FILE,
    RELATION_FILE,
    SHAPE_FILE,
    SIDE_LISTING_FILE,
    STAGE1_FILE,
    STAGE2_FILE,
    STAGE15_FILE,
    TINY_FILE,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="more data, bigger components and longer training (use > 1 on a GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", default=None, help="world directory (default: OUT/world, generated if missing)")
    parser.add_argument("--cache", default=None, help="component cache (default: OUT/cache)")
    parser.add_argument("--stage2-epochs", type=float, default=None, help="override the stage-2 epoch count")
    parser.add_argument("--motion-drill", action=argparse.BooleanOptionalAction, default=True,
                        help="the motion phase after grounding (on by default; about 2.5 minutes on 2 CPU "
                             "cores): video direction 0.59-0.69 with it, 0.32 without (chance 0.25); "
                             "docs/quickstart.md item 25")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate at most this many samples per task")
    parser.add_argument("--anyres", choices=["on", "off"], default="on",
                        help="off: one squashed crop per image (the AnyRes ablation's baseline)")


GROUNDING_MIXTURE = "grounding_mixture.yaml"  # the stage configs' mixtures, written next to them
SIDE_LISTING_MIXTURE = "side_listing_mixture.yaml"
RELATION_MIXTURE = "relation_mixture.yaml"
MOTION_MIXTURE = "motion_mixture.yaml"
MOTION_CLIPS = 2000  # in the world unless --no-motion-drill (their generation takes ~12 s)
MOTION_EPOCHS = 2  # of the 2,000 motion clips and 3,620 replayed scenes
# The tower's token-position term (VisionSettings.position_weight): without it place is 1.7% of an
# object token's variance and the LM never learned to name an object's side (side listings at the
# loss of a guess after 374 steps); at 1.0, 5.5%; at 4.0, 18-26%, and the side listings were
# learned within 250 steps (16.0 added little: 24%; docs/quickstart.md, items 24 and 26).
POSITION_WEIGHT = 4.0


def replay_mixture(world: Path, seed: int, drills: tuple[str, ...], replayed: dict[str, int],
                   folder: str = "image_folder") -> dict[str, Any]:
    """A drill phase's data (a `llavakit train` mixture): every sample of each of the world's
    ``drills`` files (their media under ``folder``), and the first N % of each ``replayed`` file,
    so the lookups learned in the phases before are kept."""
    return {"seed": seed, "datasets": [
        *[{"json_path": str(world / name), folder: str(world)} for name in drills],
        *[{"json_path": str(world / name), "image_folder": str(world), "sampling_strategy": f"first:{percent}%"}
          for name, percent in replayed.items()],
    ]}


def grounding_mixture(world: Path, seed: int) -> dict[str, Any]:
    """Every grounding scene and every tiny-object question, half the listings replayed."""
    return replay_mixture(world, seed, (GROUNDING_FILE, TINY_FILE), {LISTING_FILE: 50})


def side_listing_mixture(world: Path, seed: int) -> dict[str, Any]:
    """Every side listing, a third of the listings replayed."""
    return replay_mixture(world, seed, (SIDE_LISTING_FILE,), {LISTING_FILE: 33})


def relation_mixture(world: Path, seed: int) -> dict[str, Any]:
    """Every relation scene, a third of the listings replayed."""
    return replay_mixture(world, seed, (RELATION_FILE,), {LISTING_FILE: 33})


def motion_mixture(world: Path, seed: int) -> dict[str, Any]:
    """Every motion clip; a third of the grounding scenes, listings and relation scenes, half the
    tiny-object questions and every shape question replayed."""
    return replay_mixture(world, seed, (MOTION_FILE,),
                          {GROUNDING_FILE: 33, LISTING_FILE: 33, TINY_FILE: 50, RELATION_FILE: 33, SHAPE_FILE: 100},
                          folder="video_folder")


def visual_settings(anyres: bool) -> dict[str, Any]:
    """The tiny model's visual representation: 64 px crops of 4x4 tokens (16 px patches, one per
    cell of the world's object grid); AnyRes up to 4x4 crops, so a 256 px detail image is seen at
    full size (its 5x7 px letters inside one 16 px token each) instead of 64 px squashed (1.25x1.75
    px, not legible); videos of 8 frames at 4x4 tokens each (no pooling: a 2x pool would leave
    32 px tokens, as coarse as the mover's whole path)."""
    visual = {"grid_pinpoints": "(1x1),...,(4x4)", "max_grids": None, "video_frames": 8, "video_pool_factor": 1}
    if not anyres:
        visual |= {"image_mode": "squash", "image_newline": "image"}
    return visual


def stage_configs(out: Path, world: Path, vision_dir: Path, llm_dir: Path, scale: float, seed: int,
                  stage2_epochs: float | None, anyres: bool, feature_layer: int = -1,
                  motion_drill: bool = True) -> dict[str, dict[str, Any]]:
    common = {"seed": seed, "tensorboard": False, "log_every": 1, "save": {"keep_last": 1}}
    build = {"vision": {"pretrained": str(vision_dir), "feature_layer": feature_layer},
             "llm": {"pretrained": str(llm_dir)}, "visual": visual_settings(anyres)}
    # Stage-1 (LLaVA's alignment): the projector alone, on short captions, frozen parts. A tiny LM
    # cannot be steered by its inputs the way a 7B one is, so this stage only initialises the
    # projector; a long one drives its outputs to a large norm that stage-2 must undo first.
    stage1 = {
        **common,
        "stage": "stage1",
        "model": {"build": build},
        "data": {"sources": [{"path": str(world / STAGE1_FILE), "image_folder": str(world)}],
                 "settings": {"template": "plain", "max_length": 2048}},
        "output_dir": str(out / "stage1"),
        "micro_batch_size": 16, "global_batch_size": 32, "epochs": 1,
        "max_steps": max(10, int(40 * scale)),
        "optim": {"lr": 1e-3, "warmup_ratio": 0.03},
        "trainable": [{"pattern": r"^(multi_modal_projector\.|image_newline$)", "lr": 1e-3},
                      {"pattern": ".", "frozen": True}],
    }
    # Stage-1.5 (LLaVA-OneVision): the whole model on detailed re-captions of the stage-1 images,
    # where every object's colour, shape, size and place is named: the LM learns to read the image.
    # The tiny parts learn far faster than a 7B model, so the rates are higher than the seeds' 1e-5,
    # keeping their ratio (vision tower 5x slower). Three epochs, not one: after one the model
    # named the wrong colour for most single-object scenes, after three it named most of them
    # right, and an epoch here (38 s) costs less than half a stage-2 epoch.
    rates = [{"pattern": r"^vision_tower\.", "lr": 2e-4}, {"pattern": ".", "lr": 1e-3}]
    tower_frozen = [{"pattern": r"^vision_tower\.", "frozen": True}, {"pattern": ".", "lr": 1e-3}]

    def whole_model(stage: str, start: str, sources: list[dict], name: str, epochs: float,
                    trainable: list[dict], **optim: Any) -> dict[str, Any]:
        """A stage after stage-1: the LM and projector (and the tower where ``trainable`` lets it)
        from ``out/start/model``, 16 samples a step, LR 1e-3 unless ``optim`` says otherwise."""
        return {
            **common,
            "stage": stage,
            "model": {"checkpoint": str(out / start / "model")},
            # Decoded crops are kept across epochs (a tenth of a stage-2 step was decoding).
            "data": {"sources": sources, "settings": {"template": "auto", "max_length": 2048, "media_cache_mb": 1024}},
            "output_dir": str(out / name),
            "micro_batch_size": 8, "global_batch_size": 16, "epochs": epochs,
            "optim": {"lr": 1e-3, "warmup_ratio": 0.03, "weight_decay": 0.0, **optim},
            "trainable": trainable,
        }

    stage1_5 = whole_model("stage1.5", "stage1",
                           [{"path": str(world / STAGE15_FILE), "image_folder": str(world)}],
                           "stage1_5", 3, rates)
    # Listing: every object of a scene named by its colour and shape, "<color> <shape>" in half the
    # scenes and "<shape> <color>" in the others (synth.tasks_single.build_listing), alone. Asked as
    # questions, with the answer a dozen tokens after the word that names the object, each lookup
    # was learned abruptly after hundreds of steps or not at all (items 18-22); here the attribute
    # comes right after its cue, and from the stage-1.5 model both were learned within 300 steps
    # (the word after the cue right 0.99 of the time, teacher-forced on fresh scenes). The fixed
    # orders leave nothing to guess once learned, so it ends, as grounding does, once the loss has
    # fallen: 20 steps below 0.1 (docs/quickstart.md, item 23).
    listing = whole_model("stage1.5", "stage1_5",
                          [{"path": str(world / LISTING_FILE), "image_folder": str(world)}],
                          "listing", 3, tower_frozen, schedule="constant")
    listing["stop_at_loss"] = {"below": 0.1, "window": 20}
    # Grounding: the colour of every object of a scene asked by its shape
    # (synth.tasks_single.build_grounding), the eval's question, and the colour of the tiny object of
    # 300 large images (build_tiny_grounding, the detail task's lookup by size), with half the
    # listings replayed.
    # Straight after the re-captions this was learned abruptly, or not at all: near step 450, 650
    # or 900 in some draws, no fall in 1,122 steps in others (items 18, 21); after the listing phase
    # it fell by step 330 on a world where it had not fallen in 1,122. Without it, stage-2 learned
    # the shape questions from the listings (1.00) but not the colour questions (0.64). Up to four
    # epochs at a constant rate, ended once the loss has fallen (20 steps below 0.15).
    grounding = whole_model("stage1.5", "listing", [{"path": str(out / "configs" / GROUNDING_MIXTURE)}],
                            "grounding", 4, tower_frozen, schedule="constant")
    grounding["stop_at_loss"] = {"below": 0.15, "window": 20}
    # Relative position ("Is the red circle left or right of the blue square?") stayed at chance
    # in every run that asked for the relation word alone (0.44-0.62, chance 0.5): it needs two
    # lookups of place and a comparison in one step. The world now asks for the reasoning ("Name
    # each side first." "red left, blue right, so left.", synth.questions.relation_answer), each
    # side right after the colour that finds its object. Two phases teach it, each up to its
    # epochs at a constant rate and ended once its loss has fallen. The side listings ("orange
    # left, cyan right.", every object of a scene) teach the lookup of an object's side as the
    # listings taught colour and shape, in 250-460 steps on three worlds, once the tower's tokens
    # keep their place (POSITION_WEIGHT); the relation questions after them reached 0.84-0.87 held
    # out on the three worlds (the sides 0.975-1.00), and stayed at a guess without the listings
    # before them (docs/quickstart.md, items 26 and 27).
    # Both phases replay a third of the listings: drilled on "<colour> <side>" alone, the model lost
    # the lookup of shape by colour ("What shape is the red object?": 0.54 after the motion phase,
    # 0.76 after stage-2, where colour stayed 1.00); with the listings, from the same grounding
    # model, 0.73 after the motion phase and 0.99-1.00 after stage-2 in three data orders, position
    # 0.84-0.88. It costs steps: side listings 575 against 400, relations 266 against 111 (about
    # 45 s; item 28).
    side_listing = whole_model("stage1.5", "grounding", [{"path": str(out / "configs" / SIDE_LISTING_MIXTURE)}],
                               "side_listing", 4, tower_frozen, schedule="constant")
    side_listing["stop_at_loss"] = {"below": 0.1, "window": 20}
    relation = whole_model("stage1.5", "side_listing", [{"path": str(out / "configs" / RELATION_MIXTURE)}],
                           "relation", 2, tower_frozen, schedule="constant")
    # Its floor is above the listings': when both objects lie on one side, the relation is not in
    # the sides (about 0.03 on three worlds).
    relation["stop_at_loss"] = {"below": 0.05, "window": 20}
    drills = {"listing": listing, "grounding": grounding, "side_listing": side_listing, "relation": relation}
    # Motion: which way the one moving object of a clip goes (synth.tasks_video.MOTION_DRILL; half
    # the clips name it by its colour alone), with a third of the grounding scenes, listings and
    # relation scenes, half the tiny-object questions and 500 shape questions ("What shape is the red
    # object?", synth.tasks_single.build_shape_grounding) replayed: after side phases that replayed
    # no listings, stage-2 lost that lookup without the shape questions (0.72-0.88; item 27).
    # Stage-2's 300 direction clips leave direction near
    # chance (0.20-0.37 in every run without the phase); 3,000 clips took it to 0.59-0.74. Every
    # clip named as the eval names it ("the blue cross") cost the lookup by colour in stage-2 (shape
    # 0.73-0.85 against 1.00), and the tiny-object lookup (detail 0.16 in one data order) until the
    # grounding phase asked it; with both, shape 0.92-0.94 and detail 0.55-0.56 in two data orders
    # (docs/quickstart.md, items 19 and 25). About 140 s; --no-motion-drill skips it.
    if motion_drill:
        drills["motion"] = whole_model("stage1.5", list(drills)[-1],
                                       [{"path": str(out / "configs" / MOTION_MIXTURE)}],
                                       "motion", MOTION_EPOCHS, tower_frozen, schedule="constant")
    # Stage-2: instruction tuning of the LM and projector on every task of the world. The tower
    # stays frozen here (as in LLaVA-1.5): training it as well cost 15% more time and scored lower
    # (two epochs: colour 0.54 against 0.61, counting 0.55 against 0.62).
    # Learning here is slow, not saturated: from the same stage-1.5 model, 5 epochs against 3 took
    # colour from 0.38 to 0.66, shape from 0.62 to 0.71 and the detail task from 0.12 to 0.46, and
    # 2 epochs left colour at 0.17. That was before the stage-1.5 drills taught the lookups: from
    # the motion model of this recipe, six epochs scored as eight did (colour and shape 1.00, count
    # 0.73 against 0.75, position 0.85 against 0.87, detail 0.48 against 0.55, direction 0.45
    # against 0.41), 84 s sooner (item 28), and pay for the side phases' listings.
    stage2 = whole_model("stage2", list(drills)[-1],
                         [{"path": str(world / STAGE2_FILE), "image_folder": str(world),
                           "video_folder": str(world)}],
                         "stage2", stage2_epochs if stage2_epochs is not None else max(6.0, 6 * scale ** 0.5),
                         tower_frozen)
    # Square averaging (InternVL 2.5; train.loss_weights): under token averaging each one-word task
    # was 7.9% of the samples and 1.4% of the trained tokens (descriptions: 33%). From the same
    # grounding model on a machine where the detail task stayed unlearned (0.07, training loss 0.93),
    # square averaging scored it 0.51 (sample averaging 0.54); colour 1.00 in all three.
    stage2["loss_reduction"] = "square"
    return {"stage1": stage1, "stage1_5": stage1_5, **drills, "stage2": stage2}


def run_stage(name: str, data: dict[str, Any], configs_dir: Path) -> dict[str, Any]:
    from llavakit.train.config import load_config
    from llavakit.train.loop import Trainer

    path = configs_dir / f"{name}.yaml"
    data = {**data, "overwrite": True}  # a quickstart run rebuilds every stage it finds from an earlier one
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"\n== {name}: llavakit train {path}")
    started = time.perf_counter()
    summary = Trainer(load_config(path)).run()
    from llavakit.train.telemetry import read_metrics

    losses = [r["loss"] for r in read_metrics(Path(data["output_dir"]) / "metrics.jsonl")]
    return {"seconds": round(time.perf_counter() - started, 1), "steps": summary["steps"],
            "first_loss": losses[0], "final_loss": losses[-1], "config": str(path)}


def print_table(evaluation: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'task':<20}{'metric':<11}{'chance':>8}{'score':>8}{'n':>6}"]
    for task, row in evaluation.items():
        lines.append(f"{task:<20}{'accuracy':<11}{row['chance']:>8.3f}{row['accuracy']:>8.3f}{row['n']:>6}")
    table = "\n".join(lines)
    print("\n" + table)
    return table


def run_controls(out: Path, world: Path, limit: int | None) -> dict[str, dict[str, Any]]:
    """Colour, shape and position again, each image swapped for another sample's: chance if the
    model looks."""
    from llavakit.evaluation.runner import evaluate
    from llavakit.quickstart.controls import shuffled_images_task

    specs = [shuffled_images_task(world, task) for task in ("color", "shape", "position")]
    rows = evaluate(out / "model", [str(s) for s in specs], out / "eval-controls", data_root=world, limit=limit,
                    batch_size=32, progress=False)
    controls = {name.removeprefix("synth_"): {"accuracy": row["accuracy"], "chance": row["chance"], "n": row["n"]}
                for name, row in rows.items()}
    for name, row in controls.items():
        print(f"control {name:<17} accuracy {row['accuracy']:.3f} (chance {row['chance']:.3f}): images swapped")
    return controls


def write_report(out: Path, results: dict[str, Any], table: str) -> Path:
    from llavakit.train.plot import plot_runs

    figures = out / "figures"
    plot_runs([out / name for name in results["stages"]], figures)
    stages = results["stages"]
    lines = [
        "# llavakit quickstart report", "",
        f"Total time: {results['seconds']:.0f} s on {results['device']}.", "",
        "## Held-out evaluation", "", "```", table, "```", "",
        "Controls (same questions, each image swapped for another sample's; chance if the model looks):", "",
        *[f"- {name}: {row['accuracy']:.3f} (chance {row['chance']:.3f})" for name, row in results["controls"].items()],
        "",
        "## Training", "",
        "| stage | steps | first loss | final loss | seconds |", "|---|---|---|---|---|",
    ]
    for name, stage in stages.items():
        lines.append(f"| {name} | {stage['steps']} | {stage['first_loss']:.3f} | {stage['final_loss']:.3f} | "
                     f"{stage['seconds']} |")
    lines += ["", "![loss](figures/loss.png)", "", "![learning rate](figures/lr.png)", "",
              "## Components", "", "```json", json.dumps(results["components"], indent=2), "```", "",
              f"Chat with the model: `llavakit chat --model {out / 'model'} --image {out / 'world'}/images/...`", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(args: argparse.Namespace) -> int:
    import torch

    from llavakit.checkpoint.io import atomic_directory
    from llavakit.evaluation.runner import evaluate
    from llavakit.quickstart.components import ComponentSettings, prepare_components
    from llavakit.quickstart.settings import VisionSettings
    from llavakit.synth import EVAL_TASK_NAMES, WorldSettings, generate_world

    started = time.perf_counter()
    # Absolute paths: the stage configs written under OUT/configs resolve relative paths against
    # their own folder, as any `llavakit train` config does.
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    world = Path(args.world).resolve() if args.world else out / "world"
    print(f"== world: {world}")
    generate_world(world, WorldSettings(seed=args.seed, scale=args.scale,
                                        motion_drill=MOTION_CLIPS if args.motion_drill else 0))
    print("== components (tiny vision encoder and language model, cached)")
    vision = VisionSettings(position_weight=POSITION_WEIGHT)
    components = prepare_components(world, Path(args.cache).resolve() if args.cache else out / "cache",
                                    ComponentSettings(vision=vision, seed=args.seed, scale=args.scale))
    configs_dir = out / "configs"
    configs_dir.mkdir(exist_ok=True)
    mixtures = ({GROUNDING_MIXTURE: grounding_mixture, SIDE_LISTING_MIXTURE: side_listing_mixture,
                 RELATION_MIXTURE: relation_mixture} | ({MOTION_MIXTURE: motion_mixture} if args.motion_drill else {}))
    for name, mixture in mixtures.items():
        (configs_dir / name).write_text(yaml.safe_dump(mixture(world, args.seed), sort_keys=False))
    configs = stage_configs(out, world, components.vision_dir, components.llm_dir, args.scale, args.seed,
                            args.stage2_epochs, args.anyres == "on", components.vision_feature_layer,
                            args.motion_drill)
    stages = {name: run_stage(name, data, configs_dir) for name, data in configs.items()}
    with atomic_directory(out / "model") as staging:
        for item in (out / "stage2" / "model").iterdir():
            shutil.copy2(item, staging / item.name)
    print("\n== evaluation on held-out tasks")
    tasks = [f"synth_{name}" for name in EVAL_TASK_NAMES]
    evaluation = evaluate(out / "model", tasks, out / "eval", data_root=world, limit=args.eval_limit,
                          batch_size=32)
    table_rows = {name.removeprefix("synth_"): {"accuracy": row["accuracy"], "chance": row["chance"], "n": row["n"]}
                  for name, row in evaluation.items()}
    table = print_table(table_rows)
    controls = run_controls(out, world, args.eval_limit)
    results = {
        "eval": table_rows,
        "controls": controls,
        "stages": stages,
        "components": components.metrics,
        "seconds": round(time.perf_counter() - started, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "model": str(out / "model"),
        "settings": {"scale": args.scale, "seed": args.seed, "anyres": args.anyres,
                     "motion_drill": args.motion_drill},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = write_report(out, results, table)
    print(f"\nresults: {out / 'results.json'}\nmodel:   {out / 'model'}\nreport:  {report}")
    print(f"total:   {results['seconds']:.0f} s")
    return 0
