"""`llavakit lab`: the statistics on hand-made numbers, every shipped ablation file planned without
training, the tables and chart from hand-made results, and (slow) a real lab of a tiny recipe run
as parallel subprocesses: resumable, sharing worlds and components, and resumed after a kill."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from llavakit.cli import main
from llavakit.recipe import RECIPES_DIR, RecipeError
from llavakit.recipe.ablation import plan_lab
from llavakit.recipe.lab_report import write_report
from llavakit.recipe.stats import compare, paired_difference, summary, t_quantile_975, verdict

TINY = Path(__file__).parent / "fixtures" / "recipe" / "tiny.yaml"
SHIPPED = sorted((RECIPES_DIR / "ablations").glob("*.yaml"))
SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_summary_is_the_mean_and_sample_standard_deviation():
    assert summary([0.5, 0.7, 0.9]) == pytest.approx({"n": 3, "mean": 0.7, "std": 0.2})
    assert summary([0.4]) == {"n": 1, "mean": 0.4, "std": None}


def test_paired_difference_pairs_by_seed_and_gives_a_t_interval():
    arm = {0: 0.6, 1: 0.5, 2: 0.9, 7: 0.1}  # seed 7 has no baseline run: not paired
    baseline = {0: 0.5, 1: 0.3, 2: 0.6}
    diff = paired_difference(arm, baseline)
    assert diff["seeds"] == [0, 1, 2] and diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.2) and diff["std"] == pytest.approx(0.1)
    half = 4.303 * 0.1 / math.sqrt(3)
    assert diff["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    assert (diff["wins"], diff["ties"], diff["losses"]) == (3, 0, 0)
    mixed = paired_difference({0: 0.5, 1: 0.2, 2: 0.4}, {0: 0.5, 1: 0.3, 2: 0.3})
    assert (mixed["wins"], mixed["ties"], mixed["losses"]) == (1, 1, 1)
    assert paired_difference({0: 0.5}, {0: 0.25})["ci95"] is None  # one seed: no spread, no interval
    # the same difference on every seed (scores in steps of 1/50): no interval of zero width
    constant = paired_difference({0: 0.18, 1: 0.26, 2: 0.22}, {0: 0.22, 1: 0.30, 2: 0.26})
    assert constant["ci95"] is None and constant["losses"] == 3
    assert verdict(constant) == "-0.040 on every seed: no spread, no interval"
    assert verdict(paired_difference({0: 0.5}, {0: 0.25})) == "one seed: no interval"


def test_t_quantiles_follow_the_table_then_approach_the_normal():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    assert t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=2e-3)


def test_compare_reads_an_interval_above_zero_as_better_and_one_across_zero_as_inconclusive():
    scores = {"detail": {"single": {0: 0.2, 1: 0.25, 2: 0.3}, "anyres": {0: 0.5, 1: 0.6, 2: 0.62}},
              "color": {"single": {0: 0.6, 1: 0.7, 2: 0.5}, "anyres": {0: 0.7, 1: 0.6, 2: 0.5}}}
    table = compare(scores, "single")
    assert set(table["detail"]["vs_baseline"]) == {"anyres"}
    assert table["detail"]["vs_baseline"]["anyres"]["verdict"].startswith("better")
    assert table["color"]["vs_baseline"]["anyres"]["verdict"].startswith("inconclusive")
    assert table["detail"]["arms"]["anyres"]["mean"] == pytest.approx(0.5733333)
    same = compare({"count": {"single": {0: 0.5, 1: 0.4}, "anyres": {0: 0.5, 1: 0.4}}}, "single")
    assert same["count"]["vs_baseline"]["anyres"]["verdict"] == "no difference on any seed"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_ablation_plans_every_run_without_training(path, tmp_path):
    plan = plan_lab(path, tmp_path, seeds=None)
    assert len(plan.seeds) >= 3, "a finding is read over three seeds or more"
    assert len(plan.runs) == len(plan.ablation.arms) * len(plan.seeds)
    # the findings run on the lab recipes; an ablation of the quickstart's structure runs on its recipes
    assert all(run.recipe_path.parent == RECIPES_DIR.resolve() for run in plan.runs)
    assert plan.ablation.claim and plan.ablation.baseline in plan.ablation.arms
    assert not list(tmp_path.iterdir()), "planning writes nothing"
    # arms of one seed share a world unless an arm changes the world's settings
    own_world = [arm for arm, overrides in plan.ablation.arms.items() if any(k.startswith("world.") for k in overrides)]
    for seed in plan.seeds:
        worlds = {run.recipe.world.dir for run in plan.runs if run.seed == seed}
        assert len(worlds) == 1 + len(own_world)
    assert len({run.recipe.world.dir for run in plan.runs}) == len(plan.seeds) * (1 + len(own_world))


def test_lab_check_command_plans_a_shipped_ablation(capsys):
    assert main(["lab", "ablations/anyres", "--check", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 arms x 2 seeds = 4 runs, baseline single_crop" in out
    assert "anyres/seed-1" in out and "to run" in out


def test_recipe_ablate_and_ablate_anyres_are_the_lab(capsys):
    assert main(["recipe", "ablate", "ablations/pooling", "--check"]) == 0
    assert "3 arms x 3 seeds = 9 runs, baseline after_bilinear" in capsys.readouterr().out
    assert main(["ablate-anyres", "--check", "--seeds", "1", "--eval-limit", "5"]) == 0
    assert "2 arms x 1 seeds = 2 runs, baseline single_crop" in capsys.readouterr().out
    assert main(["lab", "ablations/anyres"]) == 2  # running needs --out
    assert "--out is required" in capsys.readouterr().err


def test_an_unknown_baseline_or_a_bad_arm_override_is_refused_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "baseline": "nope", "arms": {"a": {}}}))
    with pytest.raises(RecipeError, match="baseline 'nope' is not an arm"):
        plan_lab(bad, tmp_path)
    arms = {"a": {}, "b": {"model.visual.nope": 1}}
    bad.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "arms": arms}))
    assert main(["lab", str(bad), "--check"]) == 2
    assert "arm 'b', seed 0" in capsys.readouterr().err


def test_an_arm_can_train_from_another_base_recipe_on_the_same_world(tmp_path, capsys):
    """Two stage structures are two recipes: overrides cannot add a stage."""
    other = tmp_path / "one-stage.yaml"
    recipe = yaml.safe_load(TINY.read_text())
    recipe["name"] = "one-stage"
    recipe["stages"] = recipe["stages"][:1] + [{**recipe["stages"][1], "name": "everything"}]
    other.write_text(yaml.safe_dump(recipe))
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "seeds": 2, "arms": {"a": {}, "b": {}},
                                        "arm_recipes": {"b": "one-stage.yaml"}}))
    plan = plan_lab(ablation, tmp_path / "out")
    assert {run.arm: run.recipe_path for run in plan.runs} == {"a": TINY.resolve(), "b": other.resolve()}
    assert [s.name for s in plan.runs[-1].recipe.enabled_stages()] == ["align", "everything"]
    for seed in plan.seeds:  # equal world settings: one world per seed for both arms
        assert len({run.recipe.world.dir for run in plan.runs if run.seed == seed}) == 1
    from llavakit.recipe.lab import run_command
    assert str(other.resolve()) in run_command(plan, plan.runs[-1])
    assert main(["lab", str(ablation), "--check"]) == 0
    assert "stages align,everything" in capsys.readouterr().out

    ablation.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "arms": {"a": {}},
                                        "arm_recipes": {"c": "one-stage.yaml"}}))
    with pytest.raises(RecipeError, match="arm_recipes: 'c' is not an arm"):
        plan_lab(ablation, tmp_path / "out")
    ablation.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "arms": {"a": {}},
                                        "arm_recipes": {"a": "missing.yaml"}}))
    with pytest.raises(RecipeError, match="arm_recipes.a"):
        plan_lab(ablation, tmp_path / "out")


def _fake_results(plan, scores):
    """Each run's results.json as the runner writes it, with ``scores[arm][seed]`` for color on dev;
    the test split scores 0 everywhere, so a report that read it would show it."""
    for run in plan.runs:
        run.dir.mkdir(parents=True)
        dev = {"color": {"accuracy": scores[run.arm][run.seed], "chance": 0.125, "n": 2},
               "count": {"accuracy": 0.5, "chance": 0.2, "n": 2}}
        test = {task: {**row, "accuracy": 0.0} for task, row in dev.items()}
        (run.dir / "results.json").write_text(json.dumps({"eval_dev": dev, "eval": test,
                                                          "seconds": 60.0 * (1 + run.seed),
                                                          "recipe": run.recipe.model_dump(mode="json")}))


def test_report_tables_and_chart_from_finished_runs(tmp_path):
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(yaml.safe_dump({
        "title": "tiny arms", "claim": "squash loses colour", "recipe": str(TINY), "seeds": 3, "baseline": "base",
        "tasks": ["count"], "arms": {"base": {}, "squash": {"model.visual.image_mode": "squash",
                                                              "model.visual.image_newline": "image"}}}))
    plan = plan_lab(ablation, tmp_path / "out")
    _fake_results(plan, {"base": {0: 0.5, 1: 0.75, 2: 1.0}, "squash": {0: 0.25, 1: 0.5, 2: 0.5}})
    data = write_report(plan)

    saved = json.loads((tmp_path / "out" / "lab.json").read_text())
    assert saved == json.loads(json.dumps(data))
    color = saved["tasks"]["color"]
    assert color["arms"]["base"]["mean"] == pytest.approx(0.75) and color["arms"]["base"]["std"] == pytest.approx(0.25)
    assert color["vs_baseline"]["squash"]["mean"] == pytest.approx(-1 / 3)
    assert color["vs_baseline"]["squash"]["losses"] == 3
    assert list(saved["tasks"]) == ["count", "color"]  # the ablation's tasks lead
    assert saved["baseline"] == "base" and saved["seeds"] == [0, 1, 2]
    assert all(run["finished"] for run in saved["runs"].values())
    assert saved["runs"]["squash/seed-2"]["seconds"] == 180.0

    md = (tmp_path / "out" / "lab.md").read_text().splitlines()
    assert md[0] == "# tiny arms" and "Claim: squash loses colour" in md
    assert "6 of 6 runs finished (a run took 1.0 to 3.0 minutes)" in "\n".join(md)
    assert "| task | chance | base | squash |" in md
    assert "| color | 0.125 | 0.750 ± 0.250 | 0.417 ± 0.144 |" in md
    assert "| **count** | 0.200 | 0.500 ± 0.000 | 0.500 ± 0.000 |" in md
    row = next(line for line in md if line.startswith("| color | squash |"))
    assert "-0.333" in row and "0 / 0 / 3" in row
    png = (tmp_path / "out" / "lab.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_of_arms_besides_the_baseline_are_compared_by_seed(tmp_path):
    """A claim about two arms that are not the baseline (a larger LM against a larger tower)."""
    ablation = tmp_path / "ablation.yaml"
    arms = {"base": {}, "big_lm": {"seed": 0}, "big_tower": {"seed": 0}}
    ablation.write_text(yaml.safe_dump({"title": "sizes", "recipe": str(TINY), "seeds": 3, "baseline": "base",
                                        "arms": arms, "pairs": [["big_lm", "big_tower"]]}))
    plan = plan_lab(ablation, tmp_path / "out")
    _fake_results(plan, {"base": {0: 0.2, 1: 0.3, 2: 0.4}, "big_lm": {0: 0.6, 1: 0.7, 2: 0.9},
                         "big_tower": {0: 0.3, 1: 0.5, 2: 0.5}})
    pair = write_report(plan)["tasks"]["color"]["pairs"]["big_lm - big_tower"]
    assert pair["mean"] == pytest.approx(0.3) and pair["wins"] == 3 and pair["verdict"].startswith("better")
    assert pair["ci95"][0] == pytest.approx(0.3 - 4.303 * 0.1 / math.sqrt(3), abs=1e-9)
    md = (tmp_path / "out" / "lab.md").read_text()
    assert "## Other pairs (paired by seed: first minus second)" in md
    assert "| color | big_lm - big_tower | +0.300 | 0.100 |" in md

    ablation.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "arms": arms,
                                        "pairs": [["big_lm", "huge_lm"]]}))
    with pytest.raises(RecipeError, match=r"pair \['big_lm', 'huge_lm'\]: 'huge_lm' is not an arm"):
        plan_lab(ablation, tmp_path / "other")


def test_a_category_of_a_task_is_compared_as_a_task_of_its_own(tmp_path):
    """multiview/front: the multi-image tasks' score in one placement (results' ``by_category``)."""
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(yaml.safe_dump({
        "title": "placements", "recipe": str(TINY), "seeds": 2, "tasks": ["count/front", "count/interleaved"],
        "baseline": "mixed", "arms": {"mixed": {}, "front": {}}}))
    plan = plan_lab(ablation, tmp_path / "out")
    front = {"mixed": [0.5, 0.6], "front": [0.9, 1.0]}
    for run in plan.runs:
        run.dir.mkdir(parents=True)
        split = {"front": {"accuracy": front[run.arm][run.seed], "n": 4},
                 "interleaved": {"accuracy": 0.25, "n": 4}}
        dev = {"color": {"accuracy": 0.5, "chance": 0.125, "n": 8},
               "count": {"accuracy": 0.4, "chance": 0.2, "n": 8, "by_category": split}}
        (run.dir / "results.json").write_text(json.dumps({"eval_dev": dev}))
    saved = write_report(plan)["tasks"]
    assert list(saved) == ["count/front", "count/interleaved", "color", "count"]
    assert list(saved["count/front"]["arms"]["front"]["scores"].values()) == [0.9, 1.0]
    assert saved["count/front"]["vs_baseline"]["front"]["mean"] == pytest.approx(0.4)
    assert saved["count/interleaved"]["vs_baseline"]["front"]["mean"] == pytest.approx(0.0)
    assert "| **count/front** | 0.200 | 0.950 ± 0.071 | 0.550 ± 0.071 |" in (tmp_path / "out" / "lab.md").read_text()

    run = plan.runs[0]
    (run.dir / "results.json").write_text(json.dumps({"eval_dev": {"count": {"accuracy": 0.4, "chance": 0.2, "n": 8}}}))
    with pytest.raises(RecipeError, match=r"front/seed-0/results.json: eval_dev: task count has no category 'front' "
                                          r"\(it has: none\)"):
        write_report(plan)
    ablation.write_text(yaml.safe_dump({"title": "t", "recipe": str(TINY), "tasks": ["multiview/front"],
                                        "arms": {"a": {}}}))
    with pytest.raises(RecipeError, match=r"tasks \['multiview/front'\]: not evaluated by the recipe"):
        plan_lab(ablation, tmp_path / "other")


def test_a_run_another_lab_finished_is_copied_not_run_again(tmp_path, capsys):
    """--reuse: a run another lab finished with the same recipe as it ran (its shared folders aside)
    is copied with its origin named; a run with any other setting, or another seed, is not."""
    from llavakit.recipe.lab import reuse_runs

    squash = {"model.visual.image_mode": "squash", "model.visual.image_newline": "image"}
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"title": "first", "recipe": str(TINY), "seeds": 2, "tasks": ["count"],
                                     "arms": {"base": {}, "squash": squash}}))
    done = plan_lab(first, tmp_path / "first")
    _fake_results(done, {"base": {0: 0.5, 1: 0.75}, "squash": {0: 0.25, 1: 0.5}})

    second = tmp_path / "second.yaml"
    arms = {"as_written": {}, "squashed": {**squash, "model.visual.reduce_method": "bilinear"},  # its default
            "other": {"model.visual.image_newline": "image"}}
    second.write_text(yaml.safe_dump({"title": "second", "recipe": str(TINY), "seeds": 3, "tasks": ["count"],
                                      "baseline": "as_written", "arms": arms}))
    plan = plan_lab(second, tmp_path / "second")
    odd = tmp_path / "first" / "old" / "seed-0"  # a run of older code: a visual setting since removed
    odd.mkdir(parents=True)
    (odd / "results.json").write_text(json.dumps({"recipe": {"model": {"visual": {"gone": 1}}}}))
    assert reuse_runs(plan, [tmp_path / "first"]) == ["as_written/seed-0", "as_written/seed-1",
                                                      "squashed/seed-0", "squashed/seed-1"]
    assert not (tmp_path / "second" / "other").exists() and not (tmp_path / "second" / "as_written" / "seed-2").exists()
    copied = tmp_path / "second" / "squashed" / "seed-1"
    assert json.loads((copied / "results.json").read_text())["eval_dev"]["color"]["accuracy"] == 0.5
    assert (copied / "reused_from.txt").read_text().strip() == str((tmp_path / "first" / "squash" / "seed-1").resolve())
    assert reuse_runs(plan, [tmp_path / "first"]) == []  # finished now: nothing to copy

    third = tmp_path / "third.yaml"  # every run of it is in the first lab: the command runs none
    third.write_text(yaml.safe_dump({"title": "third", "recipe": str(TINY), "seeds": 2, "tasks": ["count"],
                                     "baseline": "plain", "arms": {"plain": {}, "squashed": squash}}))
    capsys.readouterr()
    assert main(["lab", str(third), "--out", str(tmp_path / "third"), "--reuse", str(tmp_path / "first")]) == 0
    printed = capsys.readouterr().out
    assert "reused plain/seed-0" in printed and "4 finished before, 0 to run" in printed
    lab = json.loads((tmp_path / "third" / "lab.json").read_text())
    assert lab["runs"]["squashed/seed-0"]["reused_from"] == str((tmp_path / "first" / "squash" / "seed-0").resolve())
    assert lab["tasks"]["color"]["vs_baseline"]["squashed"]["mean"] == pytest.approx(-0.25)
    assert "Copied from another lab's finished run" in (tmp_path / "third" / "lab.md").read_text()
    assert main(["lab", str(third), "--out", str(tmp_path / "x"), "--reuse", str(tmp_path / "nowhere")]) == 2
    assert "--reuse" in capsys.readouterr().err


def test_a_disabled_stage_and_the_description_do_not_make_another_run():
    """A baseline arm that disables a stage added since is the run made before it existed; an
    enabled stage, or a changed setting of one, is another run."""
    from llavakit.recipe.ablation import run_identity

    drill = {"name": "tiny", "enabled": True, "train": {"epochs": 8}}
    before = {"name": "q", "description": "old words", "stages": [{"name": "stage1", "enabled": True}]}
    after = {**before, "description": "new words", "stages": [before["stages"][0], drill]}
    disabled = {**after, "stages": [before["stages"][0], {**drill, "enabled": False}]}
    assert run_identity(disabled) == run_identity(before) != run_identity(after)
    longer = {**after, "stages": [before["stages"][0], {**drill, "train": {"epochs": 9}}]}
    assert run_identity(longer) != run_identity(after)


def _tiny_ablation(tmp_path: Path, seeds: int) -> Path:
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(yaml.safe_dump({
        "title": "tiny arms", "recipe": str(TINY), "seeds": seeds, "tasks": ["count"],
        "arms": {"base": {}, "squash": {"model.visual.image_mode": "squash", "model.visual.image_newline": "image"}}}))
    return ablation


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/seed-*/results.json")}


@pytest.mark.slow  # four real runs of a tiny recipe (world, components, two stages, evaluation each)
def test_a_lab_of_two_arms_and_two_seeds_runs_in_parallel_shares_inputs_and_resumes(tmp_path, capsys):
    ablation = _tiny_ablation(tmp_path, seeds=2)
    out = tmp_path / "out"
    assert main(["lab", str(ablation), "--out", str(out), "--jobs", "2"]) == 0
    assert "4 to run, 2 at a time" in capsys.readouterr().out

    lab = json.loads((out / "lab.json").read_text())
    assert set(lab["runs"]) == {"base/seed-0", "base/seed-1", "squash/seed-0", "squash/seed-1"}
    assert all(run["finished"] for run in lab["runs"].values())
    assert list(lab["tasks"]) == ["count", "color"]
    for task in lab["tasks"].values():
        assert task["arms"]["base"]["n"] == task["arms"]["squash"]["n"] == 2
        diff = task["vs_baseline"]["squash"]
        assert diff["n"] == 2 and (diff["ci95"] is None) == (diff["std"] <= 1e-9)  # no interval without spread
    results = json.loads((out / "squash" / "seed-1" / "results.json").read_text())
    assert results["settings"]["seed"] == 1 and results["recipe"]["model"]["visual"]["image_mode"] == "squash"
    # one world per seed and one set of components per seed, shared by both arms
    assert len([world for world in (out / "worlds").iterdir() if world.is_dir()]) == 2
    assert len(list((out / "cache").glob("vision-*"))) == 2 and len(list((out / "cache").glob("llm-*"))) == 2
    assert {r.parent.name for r in out.glob("*/seed-*/results.json")} == {"seed-0", "seed-1"}
    assert "| task | chance | base | squash |" in (out / "lab.md").read_text()
    assert (out / "lab.png").stat().st_size > 0

    before = _mtimes(out)
    assert main(["lab", str(ablation), "--out", str(out), "--jobs", "2"]) == 0
    assert "4 finished before, 0 to run" in capsys.readouterr().out
    assert _mtimes(out) == before  # nothing was run again


@pytest.mark.slow  # two real runs, one of them killed and run again
def test_a_killed_lab_resumes_keeping_finished_runs_and_restarting_the_interrupted_one(tmp_path):
    ablation = _tiny_ablation(tmp_path, seeds=1)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    lab = subprocess.Popen([sys.executable, "-m", "llavakit", "lab", str(ablation), "--out", str(out),
                            "--jobs", "1"], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, second = out / "base" / "seed-0", out / "squash" / "seed-0"
    try:
        deadline = time.monotonic() + 300
        while not (second / "lab.log").exists():  # the first run finished, the second started
            assert lab.poll() is None and time.monotonic() < deadline, "the lab ended before its second run"
            time.sleep(0.2)
        os.kill(lab.pid, signal.SIGTERM)  # the lab alone, as a scheduler would: it stops its run
        lab.wait(timeout=60)
        time.sleep(1)
        with pytest.raises(ProcessLookupError):  # nothing of the lab's session is left running
            os.killpg(lab.pid, 0)
    finally:
        try:
            os.killpg(lab.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert (first / "results.json").is_file() and not (second / "results.json").exists()
    finished_at = (first / "results.json").stat().st_mtime_ns

    assert main(["lab", str(ablation), "--out", str(out), "--jobs", "1"]) == 0
    assert (first / "results.json").stat().st_mtime_ns == finished_at  # not run again
    assert (second / "results.json").is_file()
    assert all(run["finished"] for run in json.loads((out / "lab.json").read_text())["runs"].values())


def _twice_at_once(call) -> list:
    """``call()`` in two threads at the same moment; their results."""
    results: list = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        barrier.wait()
        results.append(call())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_runs_sharing_a_world_folder_generate_it_once(tmp_path, monkeypatch):
    from llavakit import synth
    from llavakit.recipe import load_recipe
    from llavakit.recipe.runner import prepare_world

    written = []

    def slow_generate(out, settings):  # a world is complete once its world.json is there
        if not (Path(out) / "world.json").exists():
            time.sleep(0.3)
            written.append(out)
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "world.json").write_text("{}")
        return Path(out)

    monkeypatch.setattr(synth, "generate_world", slow_generate)
    recipe = load_recipe(TINY)
    _twice_at_once(lambda: prepare_world(tmp_path / "worlds" / "w", recipe))
    assert len(written) == 1


def test_two_builders_asking_for_one_component_build_it_once(tmp_path):
    from llavakit.quickstart.cache import cached_build

    builds = []

    def build(out: Path) -> dict:
        time.sleep(0.3)
        builds.append(out)
        (out / "weights").write_text("w")
        return {"loss": 1.0}

    entries = _twice_at_once(lambda: cached_build(tmp_path, "vision", {"k": 1}, build))
    assert len(builds) == 1
    assert entries[0].path == entries[1].path and sorted(e.hit for e in entries) == [False, True]
