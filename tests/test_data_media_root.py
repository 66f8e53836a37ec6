"""Media paths stay inside their folder: '..', absolute paths elsewhere and symlinks out are refused
by default (naming the sample and the path), under both error policies; an opt-in allows them."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from llavakit.data import (
    DataError, DataSettings, LlavaDataset, load_entries, load_mixture, parse_entry, read_llava_file,
)
from llavakit.synth import WorldSettings, generate_world
from test_data_fixtures import conversation, llava, processor, write_image, write_video  # noqa: F401 (fixtures)

IMAGE_Q = conversation("<image>\nWhat colour?", "Red.")
VIDEO_Q = conversation("<video>\nWhat moves?", "A ball.")


@pytest.fixture()
def tree(tmp_path):
    """media/ holds the dataset's images and clips; secret.png and outside.mp4 lie beside it."""
    media = tmp_path / "media"
    write_image(media / "ok.png")
    write_image(media / "sub" / "deep.png")
    write_video(media / "clip.mp4", frames=4)
    write_image(tmp_path / "secret.png")
    write_video(tmp_path / "outside.mp4", frames=4)
    os.symlink(tmp_path / "secret.png", media / "link_out.png")
    os.symlink(media / "ok.png", media / "link_in.png")
    os.symlink(tmp_path, media / "up")  # a folder link that leads out
    return tmp_path


INSIDE = {
    "plain": {"image": "ok.png"},
    "dot-dot that stays": {"image": "sub/../ok.png"},
    "absolute inside": {"image": "{media}/sub/deep.png"},
    "symlink that stays": {"image": "link_in.png"},
    "video": {"video": "clip.mp4"},
}
OUTSIDE = {
    "dot-dot": ({"image": "../secret.png"}, "'image' path '../secret.png'"),
    "absolute elsewhere": ({"image": "{root}/secret.png"}, "'image' path '.*/secret.png'"),
    "symlink out": ({"image": "link_out.png"}, "'image' path 'link_out.png'"),
    "through a folder link": ({"image": "up/secret.png"}, "'image' path 'up/secret.png'"),
    "one of several": ({"image": ["ok.png", "../secret.png"]}, "'image' path '../secret.png'"),
    "video dot-dot": ({"video": "../outside.mp4"}, "'video' path '../outside.mp4'"),
}


def write_data(tree, cases: dict) -> tuple:
    """One JSONL record per case, ids = case names; media folder given as image/video folder."""
    lines = []
    for name, media in cases.items():
        media = json.loads(json.dumps(media).replace("{media}", str(tree / "media")).replace("{root}", str(tree)))
        question = VIDEO_Q if "video" in media else conversation("<image>" * len(media["image"]) + "\nQ", "A") \
            if isinstance(media["image"], list) else IMAGE_Q
        lines.append(json.dumps({"id": name, **media, "conversations": question}))
    path = tree / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_media_inside_their_folder_are_read(processor, tree):
    path = write_data(tree, INSIDE)
    ds = LlavaDataset(read_llava_file(path, tree / "media", tree / "media"), processor, DataSettings(template="chatml"))
    assert all(info is not None for info in ds.lengths())
    assert [ds[i].sample_id for i in range(len(ds))] == list(INSIDE)


@pytest.mark.parametrize("case", list(OUTSIDE))
def test_media_outside_their_folder_are_refused(processor, tree, case):
    record, named = OUTSIDE[case]
    path = write_data(tree, {"good": INSIDE["plain"], case: record})
    entries = read_llava_file(path, tree / "media", tree / "media")
    message = rf"sample '{case}' \({path}:2, media .*\): outside_media_root: {named} leads outside " \
              rf"(image|video)_folder {tree / 'media'} .*set allow_outside_media_root: true"
    strict = LlavaDataset(entries, processor, DataSettings(template="chatml"))
    with pytest.raises(DataError, match=message):
        strict.lengths()
    with pytest.raises(DataError, match=message):
        strict[1]
    skipping = LlavaDataset(entries, processor, DataSettings(template="chatml", on_error="skip"))
    lengths = skipping.lengths()
    assert lengths[0] is not None and lengths[1] is None
    assert [(s.sample_id, s.code) for s in skipping.prepass_skipped] == [(case, "outside_media_root")]
    allowed = LlavaDataset(entries, processor, DataSettings(template="chatml", allow_outside_media_root=True))
    assert allowed[1].sample_id == case and allowed[1].visual_tokens > 0


def test_without_folders_the_data_files_folder_is_the_root(processor, tree):
    write_image(tree / "media" / "beside.png")
    path = tree / "media" / "data.json"
    path.write_text(json.dumps([{"id": "a", "image": "beside.png", "conversations": IMAGE_Q},
                                {"id": "b", "image": "../secret.png", "conversations": IMAGE_Q}]))
    ds = LlavaDataset(load_entries(path).entries, processor, DataSettings(template="chatml"))
    assert ds[0].sample_id == "a"
    with pytest.raises(DataError, match=r"'\.\./secret.png' leads outside the data file's folder"):
        ds[1]


def test_a_mixture_allows_it_per_dataset(processor, tree):
    write_data(tree, {"escape": OUTSIDE["dot-dot"][0]})
    mix = tree / "mix.yaml"
    mix.write_text(textwrap.dedent("""\
        datasets:
          - json_path: data.jsonl
            image_folder: media
            name: trusted
            allow_outside_media_root: true
          - json_path: data.jsonl
            image_folder: media
            name: strict
    """))
    entries = load_mixture(mix).entries
    ds = LlavaDataset(entries, processor, DataSettings(template="chatml", on_error="skip"))
    assert ds[0].sample_id == "escape"  # the trusted dataset's copy is read
    assert ds.lengths()[1] is None and ds.prepass_skipped[0].code == "outside_media_root"
    everything = load_mixture(mix, allow_outside_media_root=True).entries
    assert all(info is not None for info in LlavaDataset(everything, processor, DataSettings(template="chatml"))
               .lengths())


def test_every_file_of_a_synthetic_world_stays_in_its_folder(tmp_path):
    """The quickstart trains on a world's files with the world as image and video folder."""
    settings = WorldSettings(stage1_captions=8, train_per_task=4, eval_per_task=2, dev_per_task=2,
                             paraphrase_per_task=2, motion_drill=4)
    world = generate_world(tmp_path / "world", settings, progress=False)
    files = sorted(p for p in world.glob("*.jsonl") if p.name != "annotations.jsonl")
    assert len(files) >= 8
    samples = [parse_entry(entry) for path in files for entry in read_llava_file(path, world, world)]
    assert sum(bool(s.images) for s in samples) and sum(s.video is not None for s in samples)
