"""The world's held-out splits: test (the scenes the `eval` split had), dev (new scenes, drawn last
from a stream of its own) and test_paraphrase (test scenes asked in a held-out phrasing).

Adding dev and the paraphrases left every training file and every test scene as it was: the
digests below are of a world generated before they existed (its `eval` split renamed `test`:
ids "eval-..." -> "test-...", images eval_* -> test_*), pixels compared decoded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit.synth import EVAL_TASK_NAMES, WorldSettings, generate_world
from llavakit.synth.files import read_jsonl
from llavakit.synth.questions import PHRASINGS, TASK_PHRASINGS, phrase

SETTINGS = WorldSettings(stage1_captions=12, train_per_task=6, eval_per_task=6, dev_per_task=5, paraphrase_per_task=4,
                         motion_drill=4)
BEFORE_DEV_AND_PARAPHRASES = {
    "annotations.jsonl": "d28912c14414e11b960d5663d10c6247e916f226c1cf02f47a24052f703ac050",
    "stage15_grounding.jsonl": "079784ea1c5e88976923ac64bc6c51c79da3654e0e480a7813acfbbe1cd17edf",
    "stage15_listing.jsonl": "c2a3052ad2f21f35c71d0a0342dad9d8e7776fa3fe8551886aae6f7559335bf3",
    "stage15_motion.jsonl": "5485f8bf553d160a971e3813f9839059752a581383f63a7ed0c27b060e2339da",
    "stage15_recap.jsonl": "4dcf027953e05d3bc923ea6f8a07a15e027756789ca11243fa75a1d8d93cc47e",
    "stage15_relation.jsonl": "d7f450feeea608da4d2455d9aa32641b6cc6f828fdeedd11d29aec7a6fe16512",
    "stage15_shape.jsonl": "7eae9131cc605954fe0fee523c3430b0ac89754b028e5d13b19796f61166a4e7",
    "stage15_side_listing.jsonl": "a81b53a589e90ad64b0aacfb55d9b23e21ff1eec042bb61f8790b73c677d1bf4",
    "stage15_tiny.jsonl": "1a68009af3be8295bfd998858fe0a57db109e2f21557a452822d537a1cb38406",
    "stage1_captions.jsonl": "b4d9dc4eee41b00da2d744541eca0d1690e696ec6df01857965ada75cf4d3174",
    "stage2_instruct.jsonl": "00e03fd6a1f3e4c2301b72bdae3978c920b54f00faaa0899186421a9d4fdd579",
    "text_corpus.txt": "6a8c014b2a6fc50a42b4ba03f84793ed53ebc8772de75d7976a943fd8a827dfd",
    "test/color.jsonl": "2e1b9d080e8e45cf21543b8847df8ff7adf210e651c9ea68ad1e117373a585a6",
    "test/count.jsonl": "502fce587d07285e44c9cd6008c9731396a940d6fd2c45433a8a81d9ba27609b",
    "test/hires_detail.jsonl": "627de4bb267d9f63bca85261c6b2fb560164ae79e7965bf56fec6b1baae7892e",
    "test/multiview.jsonl": "1724887dbb23111c55f0bccc18ee4ba315dae0188bcbaed1fd344e969eec40bf",
    "test/position.jsonl": "51de7e9c3193d53ee48798993f9ffea670479bf9b4088d0ec7cea093c3009b03",
    "test/shape.jsonl": "e144a19eb535d12b812e3a31393c04b16d563b549a6aeec708cf6611f00a9457",
    "test/spot_difference.jsonl": "4a06f2c6835241af1b4dc7d9cc003cc5d9ddb9dfd702422ba4044742f2457fc3",
    "test/video_direction.jsonl": "8c243d3678b1fba0dcc220607aee2ace3585b51560ef7401367ac7570110bf7e",
    "test/which_image.jsonl": "726c3c2cf297c62c50638078d5ed3194bf8c79659ebed3bb2306e65a97d756cb",
    "training images (pixels)": "26cb5e03b80e8ddd4dac4aceec84c6fd59b787aa90248c3856a3a9eb72e4a880",
    "test images (pixels)": "c08eee24689a3061866ce9b04f254edfbe2939b1346f69346a32bd6dbc5660a8",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SETTINGS, progress=False)


def pixels(path: Path) -> bytes:
    return np.asarray(Image.open(path).convert("RGB")).tobytes()


def pixel_digest(world: Path, prefixes: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in sorted((world / "images").iterdir()):
        if path.name.startswith(prefixes):
            digest.update(path.name.encode())
            digest.update(pixels(path))
    return digest.hexdigest()


def test_training_files_and_test_scenes_are_those_of_the_world_before_dev_and_paraphrases(world):
    # (the stage-2 instructions' single-image and OneVision files came later: a split of stage2_instruct)
    new = {"stage2_single.jsonl", "stage2_onevision.jsonl"}
    files = sorted(p.name for p in world.glob("*.jsonl") if p.name not in new) + ["text_corpus.txt"]
    files += [f"test/{task}.jsonl" for task in sorted(EVAL_TASK_NAMES)]
    got = {name: hashlib.sha256((world / name).read_bytes()).hexdigest() for name in files}
    got["training images (pixels)"] = pixel_digest(world, ("train_", "stage1_"))
    got["test images (pixels)"] = pixel_digest(world, ("test_",))
    assert got == BEFORE_DEV_AND_PARAPHRASES


def test_every_split_has_every_task_at_its_size_in_world_json(world):
    manifest = json.loads((world / "world.json").read_text())
    sizes = {"test": 6, "dev": 5, "test_paraphrase": 4}
    assert set(manifest["splits"]) == set(sizes)
    for split, size in sizes.items():
        assert set(manifest["splits"][split]) == set(EVAL_TASK_NAMES)
        for task, entry in manifest["splits"][split].items():
            records = read_jsonl(world / entry["file"])
            assert entry["file"] == f"{split}/{task}.jsonl" and entry["n"] == len(records) == size
            assert all(r["id"] == f"{split}-{task}-{i:05d}" and r["chance"] == entry["chance"]
                       for i, r in enumerate(records))
    assert manifest["tasks"]["color"]["file"] == "test/color.jsonl"  # "tasks": the test split's, as before


def test_no_scene_is_shared_between_train_dev_and_test(world):
    by_split: dict[str, set[bytes]] = {"test": set(), "dev": set(), "train": set()}
    for path in (world / "images").iterdir():
        split = path.name.split("_")[0]
        by_split["train" if split in ("train", "stage1") else split].add(pixels(path))
    videos: dict[str, set[bytes]] = {"test": set(), "dev": set(), "train": set()}
    for path in (world / "videos").iterdir():
        videos[path.name.split("_")[0]].add(path.read_bytes())
    for kind in (by_split, videos):
        assert all(kind.values())
        assert not kind["dev"] & kind["test"] and not kind["dev"] & kind["train"] and not kind["test"] & kind["train"]
    # the dev split is its own scenes, not a copy of the test split's under other names
    assert read_jsonl(world / "dev" / "color.jsonl")[0]["image"] == "images/dev_color_00000.png"


def human_lines(records: list[dict]) -> set[str]:
    """Every line of every human turn, placeholders and view/image labels removed."""
    lines = set()
    for record in records:
        for turn in record["conversations"]:
            if turn["from"] == "human":
                for line in turn["value"].replace("<image>", "").replace("<video>", "").split("\n"):
                    line = re.sub(r"^(Image|View) \d+: ", "", line).strip()
                    if line:
                        lines.add(line)
    return lines


def test_paraphrases_ask_the_first_test_scenes_in_wording_training_never_uses(world):
    training = human_lines([r for path in world.glob("*.jsonl") if path.name != "annotations.jsonl"
                            for r in read_jsonl(path)])
    for task in EVAL_TASK_NAMES:
        test = read_jsonl(world / "test" / f"{task}.jsonl")
        paraphrased = read_jsonl(world / "test_paraphrase" / f"{task}.jsonl")
        assert len(paraphrased) == SETTINGS.paraphrase_per_task
        for original, asked in zip(test, paraphrased):
            for key in ("image", "video", "image_format", "answer", "options", "choices", "task"):
                assert original.get(key) == asked.get(key), (task, key)
            assert asked["question"] != original["question"] and asked["question"] == asked["conversations"][0]["value"]
            assert asked["conversations"][1:] == original["conversations"][1:]  # the same reply (position: reasoned)
            new_lines = human_lines([asked]) - human_lines([original])
            assert new_lines and not new_lines & training, (task, new_lines)
    # the dev split asks as training does
    assert human_lines(read_jsonl(world / "dev" / "count.jsonl")) == {phrase("count")}


def test_every_scored_question_kind_has_held_out_phrasings_with_the_trained_answer_format():
    assert set(TASK_PHRASINGS) == set(EVAL_TASK_NAMES)
    assert {kind for kinds in TASK_PHRASINGS.values() for kind in kinds} == set(PHRASINGS)
    for kind, phrasings in PHRASINGS.items():
        assert len(phrasings) >= 2 and len(set(phrasings)) == len(phrasings), kind
        trained_format = phrasings[0].rsplit("? ", 1)[-1].rsplit(". ", 1)[-1]  # "Answer with one word." ...
        slots = set(re.findall(r"{(\w+)}", phrasings[0]))
        for held_out in phrasings[1:]:
            assert held_out.endswith(trained_format) and set(re.findall(r"{(\w+)}", held_out)) == slots, held_out
    # every held-out variant picks a held-out phrasing, in turn
    assert [phrase("count", variant) for variant in range(4)] == [PHRASINGS["count"][i] for i in (0, 1, 2, 1)]


def test_a_world_of_the_eval_split_is_regenerated_without_it(world, tmp_path):
    """A world written before the split was named test (WORLD_VERSION 10: eval/, images/eval_*) is
    not complete for this generator; regenerating it leaves no file of the old split behind."""
    import shutil

    from llavakit.synth import is_complete

    old = tmp_path / "old"
    shutil.copytree(world, old)
    (old / "eval").mkdir()
    shutil.move(old / "test" / "color.jsonl", old / "eval" / "color.jsonl")
    shutil.copy(old / "images" / "test_color_00000.png", old / "images" / "eval_color_00000.png")
    manifest = json.loads((old / "world.json").read_text())
    (old / "world.json").write_text(json.dumps({**manifest, "version": 10}))
    assert not is_complete(old, SETTINGS)
    generate_world(old, SETTINGS, progress=False)
    assert is_complete(old, SETTINGS) and not (old / "eval").exists()
    assert not list((old / "images").glob("eval_*"))
    assert (old / "test" / "color.jsonl").read_bytes() == (world / "test" / "color.jsonl").read_bytes()


@pytest.mark.parametrize("image_format", ["interleaved", "front"])
def test_a_one_format_world_trains_on_that_placement_and_asks_both(world, tmp_path, image_format):
    """The multi-image format ablation's worlds: training samples in one placement, held-out splits
    (both placements, half each) and single-image training data as in the default world."""
    one = generate_world(tmp_path / image_format, dataclasses.replace(SETTINGS, train_image_format=image_format),
                         progress=False)
    multi = [r for r in read_jsonl(one / "stage2_instruct.jsonl") if isinstance(r.get("image"), list)]
    assert multi and {r["image_format"] for r in multi} == {image_format}
    both = [r for r in read_jsonl(world / "stage2_instruct.jsonl") if isinstance(r.get("image"), list)]
    assert {r["image_format"] for r in both} == {"interleaved", "front"}
    assert [r["id"] for r in multi] == [r["id"] for r in both]  # the same scenes, asked in one placement
    for mine, default in zip(multi, both):
        if default["image_format"] == image_format:
            assert mine == default
        else:
            first = mine["conversations"][0]["value"]
            assert re.match(r"(Image|View) 1: <image>" if image_format == "interleaved" else "<image>\n<image>", first)
    assert read_jsonl(one / "stage2_single.jsonl") == read_jsonl(world / "stage2_single.jsonl")
    for split in ("dev", "test", "test_paraphrase"):
        for task in EVAL_TASK_NAMES:
            assert (one / split / f"{task}.jsonl").read_bytes() == (world / split / f"{task}.jsonl").read_bytes()


def test_an_unknown_training_placement_is_refused():
    with pytest.raises(ValueError, match="train_image_format must be one of both, interleaved, front, got 'side'"):
        WorldSettings(train_image_format="side")


def test_a_sample_chooses_its_objects_again_when_every_scene_of_them_is_taken():
    """One object of one colour, shape and size has few places; when the splits drawn before hold
    them all, the sample chooses its objects again instead of failing the world."""
    from llavakit.synth.task import Context, HeldOut, NoAdmissibleScene

    class Scene:
        def __init__(self, name):
            self.name = name

        def signature(self):
            return self.name

    held_out = HeldOut()
    held_out.admit("test", ["first-choice"])  # the only scene of the first choice is test's
    ctx = Context(SETTINGS, Path("/unused"), "dev", "color", 0, held_out)
    choices = iter(["first", "second"])
    choice, scene = ctx.fresh_choosing(lambda: next(choices), lambda c: Scene(f"{c}-choice"))
    assert (choice, scene.name) == ("second", "second-choice")
    with pytest.raises(NoAdmissibleScene, match="dev_color_00000: no admissible scene for 100 choices"):
        ctx.fresh_choosing(lambda: "first", lambda c: Scene(f"{c}-choice"))


def test_a_first_choice_with_a_free_scene_draws_as_before():
    from llavakit.synth.scene import distinct_specs
    from llavakit.synth.task import Context, HeldOut

    def context():
        return Context(SETTINGS, Path("/unused"), "dev", "count", 3, HeldOut())

    before = context()
    specs = distinct_specs(before.rng, 2)
    expected = before.fresh(lambda: before.place(specs))
    after = context()
    chosen, scene = after.fresh_choosing(lambda: distinct_specs(after.rng, 2), after.place)
    assert chosen == specs and scene.signature() == expected.signature()
    assert after.rng.integers(1 << 30) == before.rng.integers(1 << 30)


def test_the_quickstart_world_of_seed_3_generates(tmp_path):
    """Its dev split once ran out of places for a single object of the colour task."""
    settings = dataclasses.replace(WorldSettings(), seed=3, motion_drill=0, paraphrase_per_task=1)
    world = generate_world(tmp_path / "world", settings, progress=False)
    assert len(read_jsonl(world / "dev" / "color.jsonl")) == settings.n_dev
