"""Small pieces of the synthetic world: settings, placement, words, chance, files, video codec."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llavakit.synth import WorldSettings
from llavakit.synth.files import atomic_write_text, read_jsonl, write_jsonl
from llavakit.synth.followups import candidate_pairs, follow_up_pairs
from llavakit.synth.language import (
    captions,
    detailed_description,
    join_words,
    with_article,
)
from llavakit.synth.records import chance_level
from llavakit.synth.scene import (
    Scene,
    SceneObject,
    Spec,
    distinct_specs,
    grid_cell,
    place,
    position_word,
)
from llavakit.synth.video import decode_mp4, encode_mp4, render_frames, sample_moving_scene


@pytest.mark.parametrize(
    "change",
    [
        dict(image_side=16),
        dict(hires_side=100),
        dict(video_side=63),
        dict(video_frames=1),
        dict(scale=0.0),
        dict(max_objects=9),
        dict(grid=24),  # does not divide image_side 64
        dict(grid=-1),
    ],
)
def test_settings_refuse_bad_values(change):
    with pytest.raises(ValueError, match="invalid WorldSettings"):
        WorldSettings(**change)


def test_settings_scale_counts_and_round_trip():
    settings = WorldSettings(scale=0.01)
    assert (settings.n_stage1, settings.n_train, settings.n_eval) == (20, 3, 1)
    assert WorldSettings().n_stage1 == 2000 and WorldSettings().n_train == 300 and WorldSettings().n_eval == 100
    assert WorldSettings.from_dict(settings.to_dict()) == settings


def test_placement_keeps_objects_apart_and_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = place(rng, distinct_specs(rng, 5), 64)
        if scene is None:
            continue
        boxes = [o.box for o in scene.objects]
        assert all(0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 for x1, y1, x2, y2 in boxes)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1]


@pytest.mark.parametrize(("side", "tiny_px"), [(64, 0), (256, 6)])
def test_grid_placement_puts_each_object_inside_one_aligned_cell(side, tiny_px):
    rng = np.random.default_rng(2)
    placed = 0
    for _ in range(40):
        specs = distinct_specs(rng, 4) + [Spec("letter", "red", "tiny", letter="K"), Spec("circle", "blue", "tiny")]
        scene = place(rng, specs if tiny_px else specs[:4], side, tiny_px=tiny_px, grid=16)
        if scene is None:
            continue
        placed += 1
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            cell = grid_cell(max(x2 - x1, y2 - y1), 16)
            assert cell % 16 == 0 and cell >= max(x2 - x1, y2 - y1) + 2
            # first and last pixel in the same cell, with a 1 px margin inside it
            assert x1 // cell == (x2 - 1) // cell and y1 // cell == (y2 - 1) // cell, (obj, cell)
            assert x1 % cell >= 1 and y1 % cell >= 1 and (x2 - 1) % cell <= cell - 2 and (y2 - 1) % cell <= cell - 2
    assert placed >= 30
    # one 16 px cell for a 64 px scene's objects (a 16 px patch sees the whole object), 64 px
    # cells (a 64 px AnyRes crop) for the context objects of a 256 px detail image
    assert grid_cell(round(0.22 * 64), 16) == 16 and grid_cell(round(0.22 * 256), 16) == 64
    assert grid_cell(round(0.16 * 256), 16) == 64  # not 48: a 48 px cell would straddle two crops


def test_grid_placement_refuses_objects_larger_than_the_canvas_cells():
    rng = np.random.default_rng(3)
    assert place(rng, [Spec("square", "red", "large")], 64, grid=16) is not None
    assert place(rng, [Spec("letter", "red", "tiny", letter="A")], 16, letter_cell=3, grid=16) is None


def test_distinct_specs_respect_uniqueness():
    rng = np.random.default_rng(1)
    for _ in range(20):
        specs = distinct_specs(rng, 4, unique=("shape", "color"))
        assert len({s.shape for s in specs}) == 4 and len({s.color for s in specs}) == 4


def test_words_are_grammatical():
    assert with_article("orange circle") == "an orange circle" and with_article("red cube") == "a red cube"
    assert join_words(["a", "b", "c"]) == "a, b and c" and join_words(["a"]) == "a"
    scene = Scene(
        64,
        (
            SceneObject(Spec("circle", "red", "small"), (2, 2, 11, 11)),
            SceneObject(Spec("square", "orange", "large"), (40, 40, 56, 56)),
        ),
    )
    assert captions(scene) == [
        "A small red circle and a large orange square.",
        "There are two objects in the image: a small red circle and a large orange square.",
        "A small red circle at the top left and a large orange square at the bottom right.",
    ]
    assert detailed_description(scene).endswith("The red circle is to the left of the orange square and above it.")
    assert position_word(scene.objects[0], 64) == "top left"


def test_follow_ups_take_each_kind_of_question_in_turn():
    """Three objects have 6 colour/shape questions, 1 count and 12 relations: 4 follow-ups drawn
    kind by kind ask about all four kinds, whatever the seed, and never repeat the first question."""
    scene = Scene(64, (
        SceneObject(Spec("circle", "red", "small"), (2, 2, 11, 11)),
        SceneObject(Spec("square", "orange", "large"), (40, 40, 54, 54)),
        SceneObject(Spec("cross", "blue", "small"), (36, 4, 46, 14)),
    ))
    kinds = {question: kind for kind, question, _ in candidate_pairs(scene)}
    pool = [(question, answer) for _, question, answer in candidate_pairs(scene)]
    assert sum(kind == "relation" for kind in kinds.values()) > len(pool) / 2
    asked = "What color is the circle? Answer with one word."
    for seed in range(20):
        picked = follow_up_pairs(scene, np.random.default_rng(seed), 4, asked)
        assert len(picked) == len(set(picked)) == 4 and all(p in pool for p in picked)
        assert {kinds[q] for q, _ in picked} == {"color", "shape", "count", "relation"}
        assert asked not in [q for q, _ in picked]
    assert len(follow_up_pairs(scene, np.random.default_rng(0), 100, asked)) == len(pool) - 1


def test_chance_level_takes_the_best_blind_guess():
    def record(answer, options):
        return {"answer": answer, "options": options, "choices": ["left", "right", "above", "below"]}

    balanced = [record("left", ["left", "right"]), record("above", ["above", "below"])] * 5
    assert chance_level(balanced) == 0.5  # each question offers two answers
    skewed = [record("left", ["left", "right", "above", "below"])] * 7 + [
        record("right", ["left", "right", "above", "below"])
    ] * 3
    assert chance_level(skewed) == 0.7  # always answering the majority


def test_atomic_jsonl_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.jsonl"
    assert write_jsonl(path, [{"x": 1}, {"x": 2}]) == 2
    atomic_write_text(path, '{"x": 3}\n')
    assert read_jsonl(path) == [{"x": 3}]
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


@pytest.mark.parametrize("durable, syncs", [(True, 1), (False, 0)])
def test_media_writes_skip_the_per_file_sync_and_stay_atomic(tmp_path, monkeypatch, durable, syncs):
    # A world's 20,000 images and clips are synced once, before world.json (world.py), not one
    # by one; the rename still leaves either the old file or the new one.
    import os

    from llavakit.synth.files import atomic_write_bytes

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    path = tmp_path / "a.png"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new", durable=durable)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"] and len(calls) == syncs


def test_encoded_clips_repeat_byte_for_byte_whatever_the_heap_holds():
    # libx264's macroblock-tree lookahead gave 5 of these 150 clips other bytes after the process
    # had allocated 40 MB (every run); encode_mp4 turns it off.
    rng = np.random.default_rng(3)
    clips = []
    while len(clips) < 150:
        scene = sample_moving_scene(rng, 64, ("left", "right", "up", "down")[len(clips) % 4],
                                    int(rng.integers(0, 3)), grid=16)
        if scene is not None:  # a little noise, as decoded frames carry: it is what set the bug off
            clips.append([Image.fromarray(np.clip(np.asarray(frame, dtype=int) + rng.integers(-4, 5, (64, 64, 3)),
                                                  0, 255).astype(np.uint8)) for frame in render_frames(scene, 8)])
    first = [encode_mp4(frames, fps=8) for frames in clips]
    ballast = [np.random.default_rng(i).random((1000, 1000)) for i in range(5)]
    again = [encode_mp4(frames, fps=8) for frames in clips]
    del ballast
    assert [i for i, (a, b) in enumerate(zip(first, again, strict=True)) if a != b] == []


def test_video_round_trip_keeps_colour_and_is_deterministic(tmp_path):
    frames = []
    for t in range(6):
        image = Image.new("RGB", (64, 48), (255, 255, 255))
        image.paste((40, 80, 220), (4 + 6 * t, 10, 20 + 6 * t, 26))
        frames.append(image)
    data = encode_mp4(frames, fps=8)
    assert data == encode_mp4(frames, fps=8)
    (tmp_path / "v.mp4").write_bytes(data)
    decoded = decode_mp4(tmp_path / "v.mp4")
    assert len(decoded) == 6 and decoded[0].shape == (48, 64, 3)
    centre = decoded[-1][18, 42].astype(int)
    assert np.abs(centre - np.array([40, 80, 220])).max() <= 12


def test_every_world_setting_is_a_synth_flag_with_its_description(capsys):
    """`llavakit synth --help` lists each WorldSettings field with the description the config
    reference shows (one source: a new setting needs no second help text), and a flag reaches it."""
    import argparse
    import dataclasses

    from llavakit.cli import main
    from llavakit.synth.cli import add_arguments, settings_from_args
    from llavakit.utils import DESCRIPTION

    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    listed = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for field in dataclasses.fields(WorldSettings):
        assert "--" + field.name.replace("_", "-") in listed
        assert "".join(field.metadata[DESCRIPTION].split()) in listed, field.name
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--train-image-format", "front", "--scale", "0.5", "--seed", "3"])
    assert settings_from_args(args) == WorldSettings(train_image_format="front", scale=0.5, seed=3)
