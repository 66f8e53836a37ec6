"""The media cache: decoded crops reused across epochs, bit for bit, within a byte budget; a file
replaced on disk is decoded again; nothing cached can be changed through a sample."""

from __future__ import annotations

import os

import numpy as np
import pytest

from llavakit.data import DataSettings, LlavaDataset, read_llava_file
from test_data_fixtures import conversation, llava, processor, write_image, write_json, write_video  # noqa: F401

COLOURS = [(10, 200, 30), (200, 10, 30), (30, 10, 200)]


@pytest.fixture()
def data_file(tmp_path):
    for i, colour in enumerate(COLOURS):
        write_image(tmp_path / "img" / f"{i}.png", (40 + 20 * i, 30), colour)
    write_video(tmp_path / "vid" / "clip.mp4", frames=8)
    records = [{"id": f"image{i}", "image": f"{i}.png", "conversations": conversation("<image>\nColour?", "One.")}
               for i in range(len(COLOURS))]
    records += [{"id": "both", "image": ["0.png", "1.png"],
                 "conversations": conversation("Compare <image> with <image>.", "Two.")},
                {"id": "video", "video": "clip.mp4", "conversations": conversation("<video>\nWhat happens?", "It moves.")}]
    return write_json(tmp_path / "data.json", records)


def _dataset(processor, data_file, megabytes: float) -> LlavaDataset:
    entries = read_llava_file(data_file, data_file.parent / "img", data_file.parent / "vid")
    return LlavaDataset(entries, processor, DataSettings(template="chatml", media_cache_mb=megabytes))


def test_cached_epochs_give_the_uncached_samples_bit_for_bit(processor, data_file):
    plain, cached = _dataset(processor, data_file, 0), _dataset(processor, data_file, 64)
    assert plain.media_cache is None
    media = 3 + 2 + 1  # three single images, the pair (decoded as multi-image crops), the video
    for epoch in range(3):
        for i in range(len(plain)):
            expected, got = plain[i], cached[i]
            assert np.array_equal(expected.pixel_values, got.pixel_values), (epoch, got.sample_id)
            assert expected.visual_items == got.visual_items and expected.input_ids.equal(got.input_ids)
            got.pixel_values += 1.0  # a sample's pixels are its own: the cache is not changed through them
    assert cached.media_cache.misses == media and cached.media_cache.hits == 2 * media
    assert all(not medium.crops.flags.writeable for medium in cached.media_cache.store.values())


def test_a_file_replaced_on_disk_is_decoded_again(processor, data_file):
    dataset = _dataset(processor, data_file, 64)
    before = dataset[0].pixel_values
    path = data_file.parent / "img" / "0.png"
    write_image(path, (40, 30), (250, 250, 250))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time, surely
    after = dataset[0].pixel_values
    assert not np.array_equal(before, after)
    assert np.array_equal(after, _dataset(processor, data_file, 0)[0].pixel_values)


def test_the_budget_evicts_the_least_recently_used(processor, data_file):
    one_image = _dataset(processor, data_file, 0)[0].pixel_values.nbytes
    dataset = _dataset(processor, data_file, 1.5 * one_image / 2**20)  # room for one single image
    dataset.encode(0), dataset.encode(1)  # the second evicts the first
    cache = dataset.media_cache
    assert cache.store.bytes <= cache.store.max_bytes and len(cache.store) == 1
    assert [key[1] for key in cache.store.keys()] == [str(data_file.parent / "img" / "1.png")]
    dataset.encode(0)
    assert cache.misses == 3 and cache.hits == 0


def test_a_missing_file_still_names_the_sample(processor, data_file):
    (data_file.parent / "img" / "2.png").unlink()
    dataset = _dataset(processor, data_file, 64)
    with pytest.raises(Exception, match="image2"):
        dataset.encode(2)
