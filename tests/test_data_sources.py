"""Parquet shards (LLaVA-OneVision-Data schema) and WebDataset tars read by index: the same samples
as the LLaVA JSONL they were built from, bad records named by file and row or member, mixtures of
every format, and `llavakit data` on them."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from llavakit.data import DataError, DataSettings, LlavaDataset, load_entries
from llavakit.data.cli import load_processor
from llavakit.data.sources import EntryTable, JsonlSource, Origin, ParquetSource, TarSource, open_source
from llavakit.train.plan import BatchPlan
from shard_fixtures import onevision_rows, parquet_shards, tar_shards, wds_members, write_parquet, write_tar
from test_data_cli import data_cli
from train_fixtures import write_caption_data


@pytest.fixture(autouse=True)
def _index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVAKIT_INDEX_CACHE", str(tmp_path / "tar-index"))  # not the user's ~/.cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    jsonl = write_caption_data(root, count=10, text_only=3)
    images = root / "images"
    return jsonl, images, parquet_shards(jsonl, images, root / "parquet"), tar_shards(jsonl, images, root / "wds")


@pytest.fixture(scope="module")
def processor(onevision_dir):
    return load_processor(str(onevision_dir))


def _dataset(path, processor, image_folder=None, **settings):
    entries = load_entries(path, image_folder).entries
    return LlavaDataset(entries, processor, DataSettings(template="chatml", **settings))


def test_parquet_and_tar_samples_equal_the_jsonl_ones(data, processor):
    jsonl, images, parquet, wds = data
    reference = _dataset(jsonl, processor, images)
    assert len(reference) == 13
    for shards in (parquet, wds):
        dataset = _dataset(shards, processor)
        assert len(dataset) == len(reference)
        assert dataset.lengths() == reference.lengths()
        for index in range(len(reference)):
            want, got = reference[index], dataset[index]
            assert got.sample_id == want.sample_id
            assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.labels, want.labels)
            assert (got.pixel_values is None) == (want.pixel_values is None)
            if want.pixel_values is not None:
                np.testing.assert_array_equal(got.pixel_values, want.pixel_values)


def test_the_index_reads_footers_and_headers_and_records_one_at_a_time(data):
    _, _, parquet, wds = data
    source = open_source(parquet)
    assert isinstance(source, ParquetSource) and len(source) == 13
    assert len(source.files) == 2 and len(source.group_start) - 1 == 5  # 7 + 6 rows in groups of 3
    assert source.locate(8) == (source.files[1], 0, 1)
    assert not getattr(source, "_open_groups", None)  # opening read no row
    entry = source.entry(8)
    assert entry.sample_id == "img8" and len(source._open_groups) == 1
    assert entry.location.endswith("train-00001.parquet row 1 (row group 0)")
    tar = open_source(wds)
    assert isinstance(tar, TarSource) and len(tar) == 13 and tar.key(12) == "sample000012"
    assert tar.entry(12).sample_id == "txt2" and "image" not in tar.entry(12).record


def test_tar_indexes_are_cached_by_path_size_and_time(tmp_path, data, monkeypatch):
    from llavakit.data import sources

    _, _, _, wds = data
    first = open_source(wds)
    cached = sorted((tmp_path / "tar-index").iterdir())
    assert len(cached) == 2 and all(p.suffix == ".npz" for p in cached)

    def no_scan(file):
        raise AssertionError(f"{file} was scanned again")

    monkeypatch.setattr(sources, "_index_tar", no_scan)
    again = open_source(wds)  # from the cache: no header is read
    assert [again.key(i) for i in range(len(again))] == [first.key(i) for i in range(len(first))]
    assert np.array_equal(again.member_offset, first.member_offset) and again.entry(3).sample_id == "img3"
    copy = tmp_path / "copy.tar"
    copy.write_bytes((wds / "shard-00000.tar").read_bytes())
    with pytest.raises(AssertionError, match="scanned again"):  # another file: indexed anew
        open_source(copy)
    monkeypatch.setenv("LLAVAKIT_INDEX_CACHE", "")
    with pytest.raises(AssertionError, match="scanned again"):  # cache off
        open_source(wds)


def test_the_table_pickles_without_open_handles_and_reads_after(data):
    jsonl, images, parquet, wds = data
    table = load_entries(parquet).entries + load_entries(wds).entries + load_entries(jsonl, images).entries
    assert len(table) == 39
    before = [table[i].sample_id for i in (0, 14, 38)]
    copy = pickle.loads(pickle.dumps(table))
    assert [copy[i].sample_id for i in (0, 14, 38)] == before == ["img0", "img1", "txt2"]
    with pytest.raises(IndexError):
        table[39]


def test_jsonl_is_indexed_by_line_and_bad_lines_keep_their_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "a", "conversations": []}\n\n{"id": \xff}\n{"id": "c"}\n')
    source = JsonlSource(path, Origin())
    assert len(source) == 3 and source.lines.tolist() == [1, 3, 4]
    assert source.entry(2).record == {"id": "c"}
    assert "line is not UTF-8" in source.entry(1).record.reason and source.entry(1).position == 3


def _bad_parquet(tmp_path, data):
    jsonl, images, _, _ = data
    rows = onevision_rows(jsonl, images)[:4]
    rows[1] = {**rows[1], "conversations": []}
    rows[2] = {**rows[2], "image": {"bytes": b"not an image at all", "path": "x.png"}}
    return write_parquet(rows, tmp_path / "bad.parquet", row_group_size=2)


def test_bad_parquet_rows_are_named_by_file_and_row(tmp_path, data, processor):
    path = _bad_parquet(tmp_path, data)
    dataset = _dataset(path, processor, on_error="skip")
    lengths = dataset.lengths()
    assert [info is None for info in lengths] == [False, True, True, False]
    empty, corrupt = dataset.prepass_skipped
    assert empty.code == "malformed_conversation" and empty.data_file == f"{path} row 1 (row group 0)"
    assert corrupt.code == "corrupt_media" and corrupt.data_file == f"{path} row 2 (row group 1)"
    assert corrupt.media_file == f"{path} row 2 (row group 1) image"
    with pytest.raises(DataError, match=r"bad\.parquet row 2 \(row group 1\).*corrupt_media"):
        _dataset(path, processor)[2]


def test_bad_tar_members_are_named(tmp_path, data, processor):
    jsonl, images, _, _ = data
    members = wds_members(jsonl, images)[:6]  # samples 0-2, each a .json and a .png
    members[2] = ("sample000001.json", b'{"id": "img1", "conversations": ')
    members[5] = ("sample000002.png", b"\x89PNG truncated")
    path = write_tar(members + [("sample000003.png", members[1][1])], tmp_path / "bad.tar")
    dataset = _dataset(path, processor, on_error="skip")
    assert [info is None for info in dataset.lengths()] == [False, True, True, True]
    not_json, corrupt, no_json = dataset.prepass_skipped
    assert not_json.data_file == f"{path} member sample000001.json" and "not valid JSON" in not_json.reason
    assert corrupt.code == "corrupt_media" and corrupt.media_file == f"{path} member sample000002.png"
    assert no_json.data_file == f"{path} member sample000003.json" and "no .json member" in no_json.reason


def test_parquet_images_may_be_lists_and_paths(tmp_path, data, processor):
    jsonl, images, _, _ = data
    two = "<image>\n<image>\nSame colour?"
    rows = [
        {"id": "pair", "data_source": "x", "image": None,
         "conversations": [{"from": "human", "value": two}, {"from": "gpt", "value": "No."}]},
        {"id": "by-path", "data_source": "x", "image": {"bytes": None, "path": "3.png"},
         "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]},
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "id": [r["id"] for r in rows],
        "image": pa.array([[{"bytes": (images / "0.png").read_bytes(), "path": None},
                            {"bytes": (images / "1.png").read_bytes(), "path": None}], [rows[1]["image"]]],
                          pa.list_(image_type)),
        "conversations": [r["conversations"] for r in rows], "data_source": ["x", "x"]})
    pq.write_table(table, tmp_path / "multi.parquet")
    dataset = _dataset(tmp_path / "multi.parquet", processor, images)
    pair, by_path = dataset.sample(0), dataset.sample(1)
    assert pair.modality == "multi_image" and [str(i) for i in pair.images] == [
        f"{tmp_path / 'multi.parquet'} row 0 (row group 0) image {k}" for k in (0, 1)]
    assert by_path.images == (images / "3.png",)
    assert dataset[0].visual_tokens > 0 and dataset[1].visual_tokens > 0


def test_unreadable_shards_are_refused_naming_the_file(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"a\.parquet.*not a readable Parquet file"):
        open_source(tmp_path / "p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet or .tar shard"):
        open_source(tmp_path / "empty")


def test_a_mixture_combines_every_format_deterministically(tmp_path, data, processor):
    jsonl, images, parquet, wds = data
    spec = {"seed": 3, "datasets": [
        {"path": str(parquet), "sampling_strategy": "random:50%", "name": "onevision"},
        {"path": str(wds), "sampling_strategy": "first:4"},
        {"json_path": str(jsonl), "image_folder": str(images), "sampling_strategy": "end:2"},
    ]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    first = load_entries(tmp_path / "mix.yaml")
    again = load_entries(tmp_path / "mix.yaml")
    ids = [e.sample_id for e in first.entries]
    assert ids == [e.sample_id for e in again.entries] and len(ids) == 7 + 4 + 2
    assert ids[7:] == ["img0", "img1", "img2", "img3", "txt1", "txt2"]
    assert [p.name for p in first.parts] == ["onevision", "wds", "data"]
    dataset = LlavaDataset(first.entries, processor, DataSettings(template="chatml"))
    assert all(info is not None for info in dataset.lengths())
    (tmp_path / "both.yaml").write_text(yaml.safe_dump({"datasets": [{"path": "a", "json_path": "b"}]}))
    with pytest.raises(Exception, match="exactly one"):
        load_entries(tmp_path / "both.yaml")


def test_ranks_take_disjoint_shares_of_a_streamed_epoch(data):
    _, _, parquet, _ = data
    table = load_entries(parquet).entries
    plan = BatchPlan(tuple(range(len(table))), (0,) * len(table), (True,) * len(table), global_batch=4,
                     micro_batch=1, world_size=2, seed=0, group_by_length=False)
    seen = []
    for step in range(plan.steps_per_epoch):
        shares = [sum(plan.micro_batches(step, rank), []) for rank in (0, 1)]
        assert not set(shares[0]) & set(shares[1])
        seen += shares[0] + shares[1]
    assert len(seen) == len(set(seen)) == 12
    assert {table[i].sample_id for i in seen} <= {e.sample_id for e in table}


def test_video_members_of_a_tar_are_decoded_from_memory(tmp_path, processor):
    from test_data_fixtures import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=6)
    record = {"id": "v", "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                                           {"from": "gpt", "value": "Nothing."}]}
    path = write_tar([("v.json", json.dumps(record).encode()), ("v.mp4", clip.read_bytes())], tmp_path / "v.tar")
    sample = _dataset(path, processor)[0]
    assert sample.modality == "video" and sample.visual_tokens > 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    medium = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"id": ["v"], "video": pa.array([{"bytes": clip.read_bytes(), "path": None}], medium),
                      "conversations": [record["conversations"]]})
    pq.write_table(table, tmp_path / "v.parquet")
    from_parquet = _dataset(tmp_path / "v.parquet", processor)[0]
    assert torch.equal(from_parquet.input_ids, sample.input_ids)
    np.testing.assert_array_equal(from_parquet.pixel_values, sample.pixel_values)
    frames = processor.load_video(clip.read_bytes())
    assert len(frames.images) == min(6, processor.visual.video_frames)


def test_data_commands_read_shards(data, onevision_dir, tmp_path):
    _, _, parquet, wds = data
    code, out, _ = data_cli("inspect", parquet, "--model", onevision_dir, "--index", 8, "--template", "chatml",
                            "--color", "never")
    assert code == 0 and "sample 'img8'" in out and "train-00001.parquet row 1 (row group 0)" in out
    code, out, _ = data_cli("stats", wds, "--model", onevision_dir, "--json", "--template", "chatml")
    stats = json.loads(out)
    assert code == 0 and stats["total"]["modalities"] == {"image": 10, "text": 3}
    bad = _bad_parquet(tmp_path, data)
    code, out, _ = data_cli("check", bad, "--model", onevision_dir, "--template", "chatml")
    assert code == 1
    assert f"{bad} row 2 (row group 1) [{bad} row 2 (row group 1) image]\tcorrupt_media" in out


def test_embedded_images_keep_the_pixel_limit(tmp_path, processor):
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 4000), (1, 2, 3)).save(buffer, format="PNG")
    rows = [{"id": "big", "image": {"bytes": buffer.getvalue(), "path": None}, "data_source": "x",
             "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}]
    path = write_parquet(rows, tmp_path / "big.parquet")
    processor.visual.max_image_pixels, limit = 1000, processor.visual.max_image_pixels
    try:
        with pytest.raises(DataError, match="exceeds the limit"):
            _dataset(path, processor).lengths()
    finally:
        processor.visual.max_image_pixels = limit
    assert isinstance(EntryTable(), EntryTable) and len(EntryTable()) == 0
