"""Readers and sample formats on real files: JSON/JSONL, folders, text-only, multi-image anywhere,
video (PyAV decoding, uniform sampling, time instruction), 3D multi-view, image placement formats."""

from __future__ import annotations

import numpy as np
import pytest

from llavakit.data import DataSettings, LlavaDataset, PlacementSettings, load_entries, read_llava_file
from llavakit.data.placement import choose_format
from test_data_fixtures import (  # noqa: F401 (fixtures)
    MULTI_IMAGE_TOKENS, SQUARE_IMAGE_TOKENS, conversation, frame_color, llava, processor, trained_runs, write_image,
    write_json, write_jsonl, write_video,
)


def dataset(processor, path, **settings) -> LlavaDataset:
    image_folder, video_folder = path.parent / "images", path.parent / "videos"
    return LlavaDataset(read_llava_file(path, image_folder, video_folder), processor, DataSettings(**settings))


def prompt_text(processor, sample) -> str:
    """The decoded sample with each run of placeholders written once."""
    ids = sample.input_ids.tolist()
    keep = [t for i, t in enumerate(ids) if i == 0 or t != ids[i - 1] or t not in
            (processor.image_token_id, processor.video_token_id)]
    return processor.tokenizer.decode(keep)


@pytest.fixture()
def root(tmp_path):
    for name, color in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0)), ("c.png", (0, 0, 255))):
        write_image(tmp_path / "images" / name, (20, 50), color)
    write_image(tmp_path / "images" / "square.png", (30, 30))
    write_video(tmp_path / "videos" / "clip.mp4", frames=10, fps=5)
    return tmp_path


def test_json_and_jsonl_with_both_turn_styles_read_the_same(processor, root):
    records = [
        {"id": "a", "image": "square.png", "conversations": conversation("<image>\nWhat?", "Red.")},
        {"id": "b", "image": "square.png", "conversations": conversation("<image>\nWhat?", "Red.", style="role")},
        {"id": "c", "image": "square.png", "conversations": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]},
    ]
    from_json = dataset(processor, write_json(root / "d.json", records))
    from_jsonl = dataset(processor, write_jsonl(root / "d.jsonl", records))
    encoded = [d[i] for d in (from_json, from_jsonl) for i in range(3)]
    assert [s.sample_id for s in encoded] == ["a", "b", "c"] * 2
    assert all(s.input_ids.tolist() == encoded[0].input_ids.tolist() for s in encoded)
    assert all(s.labels.tolist() == encoded[0].labels.tolist() for s in encoded)
    assert from_jsonl.entries[1].position == 2  # line numbers for error messages


def test_paths_resolve_against_folders_or_the_data_file(processor, root):
    write_image(root / "beside.png", (30, 30))
    records = [{"id": "x", "image": "beside.png", "conversations": conversation("<image>\nQ", "A")}]
    data = write_json(root / "beside.json", records)
    ds = LlavaDataset(read_llava_file(data), processor)  # no folder: relative to the data file
    assert ds[0].visual_tokens == SQUARE_IMAGE_TOKENS
    absolute = [{"id": "y", "image": str(root / "images" / "square.png"), "conversations": conversation("<image>\nQ", "A")}]
    ds = dataset(processor, write_json(root / "abs.json", absolute))  # absolute, inside the image folder
    assert ds[0].visual_tokens == SQUARE_IMAGE_TOKENS


def test_text_only_sample(processor, root):
    ds = dataset(processor, write_json(root / "t.json", [{"id": "t", "conversations": conversation("Hi", "Hello!")}]))
    sample = ds[0]
    assert sample.modality == "text" and sample.pixel_values is None and sample.visual_items == []
    assert processor.tokenizer.decode(trained_runs(sample.input_ids, sample.labels)[0]) == "Hello!<|im_end|>"


def test_multi_image_with_placeholders_in_any_turn(processor, root):
    """Images follow placeholder order across turns: the third image is in the second user turn."""
    records = [{"id": "m", "image": ["a.png", "b.png", "c.png"], "conversations": conversation(
        "Is <image> like <image>?", "No.", "And this one: <image>", "Blue.")}]
    sample = dataset(processor, write_json(root / "m.json", records))[0]
    assert sample.modality == "multi_image"
    assert [i.kind for i in sample.visual_items] == ["single"] * 3
    assert sample.visual_tokens == 3 * MULTI_IMAGE_TOKENS
    assert sample.pixel_values.shape == (3, 3, 30, 30)
    # crop order = placeholder order: red, green, blue (centre pixel of each padded crop)
    centre = sample.pixel_values[:, :, 15, 15]
    assert [int(np.argmax(c)) for c in centre] == [0, 1, 2]
    text = prompt_text(processor, sample)
    assert "Is <image> like <image>?" in text and "And this one: <image>" in text


def test_3d_multi_view_is_multi_image(processor, root):
    views = ["a.png", "b.png", "c.png", "square.png"]
    records = [{"id": "scene", "image": views, "conversations": conversation(
        "<image>\n<image>\n<image>\n<image>\nHow many chairs are in the room?", "Two.")}]
    sample = dataset(processor, write_json(root / "s.json", records))[0]
    assert sample.modality == "multi_image" and len(sample.visual_items) == 4
    assert sample.visual_tokens == 4 * MULTI_IMAGE_TOKENS  # one padded crop per view, never AnyRes


def test_video_uniform_frames_and_time_instruction(processor, root):
    records = [{"id": "v", "video": "clip.mp4", "conversations": conversation("<video>\nWhat moves?", "A ball.")}]
    path = write_json(root / "v.json", records)
    plain = dataset(processor, path)[0]
    assert plain.modality == "video" and plain.visual_items[0].kind == "video"
    assert plain.visual_tokens == 4 * 4 + 1  # 4 frames of 2x2 pooled tokens, one newline
    # 10 frames, 4 sampled uniformly: frames 0, 3, 6, 9 (mean colour of each decoded frame)
    pixels = (plain.pixel_values.mean(axis=(2, 3)) * 0.5 + 0.5) * 255
    expected = np.array([frame_color(i) for i in (0, 3, 6, 9)], dtype=float)
    assert np.abs(pixels - expected).max() < 8
    timed = dataset(processor, path, time_instruction=True)[0]
    assert prompt_text(processor, timed).startswith(
        "<|im_start|>user\n<video>\nThe video lasts for 2.00 seconds, and 4 frames are uniformly sampled from it. "
        "These frames are located at 0.00s,0.60s,1.20s,1.80s.Please answer the following questions related to "
        "this video.\n\nWhat moves?<|im_end|>"
    )
    assert timed.visual_tokens == plain.visual_tokens


def test_llava_video_data_marks_the_video_with_image(processor, root):
    records = [{"id": "v", "video": "clip.mp4", "conversations": conversation("<image>\nWhat moves?", "A ball.")}]
    sample = dataset(processor, write_json(root / "v.json", records))[0]
    assert sample.visual_items[0].kind == "video"
    assert int((sample.input_ids == processor.video_token_id).sum()) == sample.visual_tokens


def test_length_estimates_from_headers_equal_the_encoded_lengths(processor, root):
    records = [
        {"id": "i", "image": "square.png", "conversations": conversation("<image>\nQ", "A")},
        {"id": "m", "image": ["a.png", "b.png"], "conversations": conversation("<image> <image> Q", "A")},
        {"id": "v", "video": "clip.mp4", "conversations": conversation("<video>\nQ", "A")},
        {"id": "t", "conversations": conversation("Q", "A", "Q2", "A2")},
    ]
    ds = dataset(processor, write_json(root / "l.json", records))
    infos = ds.lengths()
    assert [i.modality for i in infos] == ["image", "multi_image", "video", "text"]
    for index, info in enumerate(infos):
        sample = ds[index]
        assert (info.text_tokens, info.visual_tokens) == (sample.text_tokens, sample.visual_tokens)


MULTI = [{"id": f"m{i}", "image": ["a.png", "b.png"], "conversations": conversation(
    "Image 1: <image>\nImage 2: <image>\nWhich one is green?", "The second.")} for i in range(40)]


def test_interleaved_keeps_placeholders_where_written(processor, root):
    sample = dataset(processor, write_json(root / "p.json", MULTI[:1]))[0]
    assert "Image 1: <image>\nImage 2: <image>\nWhich one is green?" in prompt_text(processor, sample)


def test_front_moves_images_first_and_refers_to_them(processor, root):
    sample = dataset(processor, write_json(root / "p.json", MULTI[:1]), placement=PlacementSettings(format="front"))[0]
    assert "user\n<image>\n<image>\nImage 1: Image 1\nImage 2: Image 2\nWhich one is green?<|im_end|>" in \
        prompt_text(processor, sample)
    assert sample.pixel_values[0, 0, 15, 15] > sample.pixel_values[1, 0, 15, 15]  # still red first, green second


def test_front_formatted_records_are_kept_as_written(processor, root):
    record = {**MULTI[0], "image_format": "front", "conversations": conversation(
        "<image>\n<image>\nIs the first image red?", "Yes.")}
    for fmt in ("interleaved", "front", "mixed"):
        sample = dataset(processor, write_json(root / "f.json", [record]),
                         placement=PlacementSettings(format=fmt))[0]
        assert "user\n<image>\n<image>\nIs the first image red?" in prompt_text(processor, sample)


def test_mixed_placement_has_the_ratio_and_is_seeded(processor, root):
    settings = PlacementSettings(format="mixed", front_ratio=0.25, seed=3)
    picks = [choose_format(settings, key) for key in range(4000)]
    assert abs(picks.count("front") / len(picks) - 0.25) < 0.03
    assert picks == [choose_format(settings, key) for key in range(4000)]
    assert picks != [choose_format(settings.model_copy(update={"seed": 4}), key) for key in range(4000)]
    ds = dataset(processor, write_json(root / "mix.json", MULTI), placement=settings)
    formats = ["front" if "user\n<image>\n<image>\nImage 1: Image 1" in prompt_text(processor, ds[i])
               else "interleaved" for i in range(len(ds))]
    assert formats == [choose_format(settings, i) for i in range(len(ds))]
    assert 0 < formats.count("front") < len(formats)


def test_single_images_are_never_moved(processor, root):
    records = [{"id": "s", "image": "square.png", "conversations": conversation("Look: <image> what is it?", "Red.")}]
    sample = dataset(processor, write_json(root / "s.json", records), placement=PlacementSettings(format="front"))[0]
    assert "Look: <image> what is it?" in prompt_text(processor, sample)


def test_load_entries_reads_one_file_as_a_mixture(root):
    path = write_jsonl(root / "one.jsonl", MULTI[:3])
    mixture = load_entries(path, root / "images")
    assert [e.sample_id for e in mixture.entries] == ["m0", "m1", "m2"]
    assert mixture.parts[0].selected == 3 and mixture.entries[0].image_folder == str(root / "images")
