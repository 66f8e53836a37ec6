"""Bad data, under both policies: fail fast naming sample, file and reason; or skip and report.

Every case sits between two good samples in a JSONL file on disk. Under ``skip`` the batch holds
exactly the two good samples (nothing substituted) and the report holds the bad one with its reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from llavakit.data import Collator, DataError, DataSettings, LlavaDataset, SkippedSample, SkipReport, read_llava_file
from test_data_fixtures import conversation, llava, processor, write_image, write_video  # noqa: F401 (fixtures)

GOOD = conversation("<image>\nWhat colour?", "Red.")


def corrupt_png(path):
    """A real PNG cut in half: the header reads, the pixels do not."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CASES = {
    # name: (record or raw JSONL line, code, words the message must contain)
    "missing image": ({"image": "nowhere.png", "conversations": GOOD}, "missing_media", "nowhere.png.*file not found"),
    "not an image": ({"image": "garbage.png", "conversations": GOOD}, "corrupt_media", "garbage.png.*not a readable"),
    "truncated image": ({"image": "cut.png", "conversations": GOOD}, "corrupt_media", "cut.png.*truncated or corrupt"),
    "missing video": ({"video": "gone.mp4", "conversations": conversation("<video>\nQ", "A")},
                      "missing_media", "gone.mp4.*file not found"),
    "corrupt video": ({"video": "junk.mp4", "conversations": conversation("<video>\nQ", "A")},
                      "corrupt_media", "junk.mp4"),
    "too few placeholders": ({"image": ["ok.png", "ok.png"], "conversations": GOOD}, "placeholder_mismatch",
                             "1 <image> and 0 <video> placeholders but the record gives 2 images"),
    "placeholder without image": ({"conversations": GOOD}, "placeholder_mismatch", "gives 0 images"),
    "placeholder in a reply": ({"image": "ok.png", "conversations": conversation("<image>\nQ", "See <image>")},
                               "placeholder_mismatch", r"conversations\[1\] \(assistant\) contains a placeholder"),
    "empty conversation": ({"conversations": []}, "malformed_conversation", "'conversations' is missing, empty"),
    "no conversation": ({"image": "ok.png"}, "malformed_conversation", "'conversations' is missing"),
    "empty reply": ({"conversations": conversation("Hi", "  ")}, "malformed_conversation",
                    r"conversations\[1\] \(assistant\) is empty"),
    "unknown role": ({"conversations": [{"from": "robot", "value": "x"}]}, "malformed_conversation",
                     "unknown role 'robot'"),
    "no answer": ({"conversations": conversation("Hi", "Hello", "Bye")}, "malformed_conversation",
                  "no assistant answer at the end"),
    "two user turns": ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
                       "malformed_conversation", r"conversations\[1\] is a user turn where the assistant turn belongs"),
    "not json": ('{"id": "bad", "conversations": [', "malformed_conversation", "line is not valid JSON"),
    # Latin-1 text (an unpaired surrogate here is written as the raw byte 0xe9)
    "not utf-8": ('{"id": "bad", "conversations": [{"from": "human", "value": "caf\udce9"}]}',
                  "malformed_conversation", "line is not UTF-8 text: byte 0xe9 at line 2, column 64"),
    "turn not an object": ({"conversations": ["hello"]}, "malformed_conversation", r"conversations\[0\] must be"),
    "too long": ({"conversations": conversation("word " * 300, "short answer")}, "too_long",
                 "exceed max_length=200.*refused whole"),
    "visual tokens too long": ({"image": ["ok.png"] * 12, "conversations": conversation("<image>" * 12, "A")},
                               "too_long", "exceed max_length=200"),
}


@pytest.fixture()
def case_file(tmp_path, request):
    record, code, pattern = CASES[request.param]
    write_image(tmp_path / "ok.png", (30, 30))
    (tmp_path / "garbage.png").write_bytes(b"this is not a picture")
    corrupt_png(tmp_path / "cut.png")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    good = [{"id": f"good{i}", "image": "ok.png", "conversations": GOOD} for i in range(2)]
    bad = record if isinstance(record, str) else json.dumps({"id": "bad", **record})
    path = tmp_path / "data.jsonl"
    path.write_bytes(f"{json.dumps(good[0])}\n{bad}\n{json.dumps(good[1])}\n".encode("utf-8", "surrogateescape"))
    return path, code, pattern


def bad_id(path) -> str:
    """The bad sample's id; a line that is not (UTF-8) JSON has none, so it is named by file and line."""
    try:
        return json.loads(path.read_bytes().splitlines()[1].decode("utf-8"))["id"]
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return f"{path.name}#2"


def dataset(processor, path, on_error):
    return LlavaDataset(read_llava_file(path), processor, DataSettings(template="chatml", max_length=200,
                                                                       on_error=on_error))


@pytest.mark.parametrize("case_file", list(CASES), indirect=True)
def test_fail_fast_names_sample_file_and_reason(processor, case_file):
    path, code, pattern = case_file
    ds = dataset(processor, path, "raise")
    assert ds[0].sample_id == "good0"
    sample_id = bad_id(path)
    with pytest.raises(DataError, match=f"sample '{sample_id}' \\({path}:2.*{code}: .*{pattern}") as caught:
        ds[1]
    assert caught.value.sample_id == sample_id and caught.value.code == code
    assert caught.value.data_file == f"{path}:2"


@pytest.mark.parametrize("case_file", list(CASES), indirect=True)
def test_skip_leaves_the_sample_out_and_reports_it(processor, case_file, tmp_path):
    path, code, pattern = case_file
    ds = dataset(processor, path, "skip")
    items = [ds[i] for i in range(3)]
    assert isinstance(items[1], SkippedSample) and items[1].code == code
    batch = Collator(processor.tokenizer.pad_token_id)(items)
    assert batch.sample_ids == ["good0", "good1"]
    assert batch.input_ids.shape[0] == 2  # nothing substituted for the bad sample
    report = SkipReport(batch.skipped)
    report.extend(batch.skipped)  # the same sample seen again (another epoch) counts once
    assert len(report) == 1 and report.summary() == f"skipped 1 samples ({code}: 1)"
    written = [json.loads(line) for line in report.write(tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert written[0]["sample_id"] == bad_id(path) and written[0]["code"] == code and written[0]["index"] == 1
    assert written[0]["data_file"] == f"{path}:2"


HEADER_DETECTABLE = ["missing image", "not an image", "missing video", "corrupt video", "too few placeholders",
                     "empty conversation", "unknown role", "not json", "not utf-8", "too long",
                     "visual tokens too long"]


@pytest.mark.parametrize("case_file", HEADER_DETECTABLE, indirect=True)
def test_length_prepass_applies_the_policy(processor, case_file):
    """Problems visible without decoding are caught before training starts (sampler never sees them)."""
    path, code, _ = case_file
    with pytest.raises(DataError, match=code):
        dataset(processor, path, "raise").lengths()
    ds = dataset(processor, path, "skip")
    lengths = ds.lengths()
    assert lengths[0] is not None and lengths[1] is None and lengths[2] is not None
    assert [(s.index, s.code) for s in ds.prepass_skipped] == [(1, code)]


def test_an_all_skipped_batch_is_empty(processor, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "image": "missing.png", "conversations": GOOD}) + "\n")
    batch = Collator(0)([dataset(processor, path, "skip")[0]])
    assert batch.is_empty and [s.sample_id for s in batch.skipped] == ["x"]


def test_a_bad_json_file_is_an_error_under_both_policies(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="broken.json.*not valid JSON"):
        read_llava_file(path)
    path.write_bytes(b'[{"id": "a"},\n {"id": "caf\xe9"}]')  # Latin-1, not UTF-8
    with pytest.raises(DataError, match=r"broken.json.*not UTF-8 text: byte 0xe9 at line 2, column 13"):
        read_llava_file(path)
    path.write_text('{"id": 1}')
    with pytest.raises(DataError, match="holds a list of records"):
        read_llava_file(path)
    with pytest.raises(DataError, match="data file not found"):
        read_llava_file(tmp_path / "nope.jsonl")


def test_a_video_that_stops_early_is_corrupt(processor, tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=10)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 2 // 3])
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps({"id": "cut", "video": "v.mp4", "conversations": conversation("<video>\nQ", "A")}))
    try:
        dataset(processor, path, "raise")[0]
    except DataError as err:
        assert err.code == "corrupt_media" and "v.mp4" in str(err)
    else:  # a demuxer that drops the cut frames entirely still samples from what is there: no silent repair
        pytest.skip("this FFmpeg build decodes the truncated file without an error")
