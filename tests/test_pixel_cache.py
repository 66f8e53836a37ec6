"""The preprocessed-pixel cache: a repeated medium (file, bytes, data URL) is neither decoded nor
preprocessed again, its pixels equal a fresh preprocessing bit for bit, another file or another
setting misses, entries cannot be changed by callers, and the cache stays within its bytes."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from conftest import random_image

import llavakit
from llavakit.errors import MediaError
from llavakit.processing import image as image_ops
from llavakit.processing.pixel_cache import PixelCache
from llavakit.processing.processor import LlavaProcessor


@pytest.fixture(scope="module")
def llava(onevision_dir):
    return llavakit.load(onevision_dir)


@pytest.fixture
def processor(llava):
    """The model's processor with a fresh pixel cache (tests must not share entries)."""
    return LlavaProcessor(llava.config, llava.tokenizer, pixel_cache=PixelCache(64 * 2**20))


class Calls:
    """Counts calls of a module function (the image decoder, the normaliser) through monkeypatch."""

    def __init__(self, monkeypatch, module, name):
        self.count = 0
        original = getattr(module, name)

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def conversation(source, text="What is shown?", turns=1):
    """A chat whose first user turn holds the image; ``turns`` > 1 adds follow-up turns."""
    messages = [{"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": text}]}]
    for turn in range(1, turns):
        messages += [{"role": "assistant", "content": f"Answer {turn}."}, {"role": "user", "content": f"And {turn}?"}]
    return messages


def prepare(processor, messages):
    prompt, media = processor.render_prompt(messages)
    return processor([prompt], [media])


def test_a_repeated_image_file_is_decoded_and_preprocessed_once(processor, llava, tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    random_image(300, 500, seed=1).save(path)
    decoded = Calls(monkeypatch, image_ops, "open_image")
    normalised = Calls(monkeypatch, image_ops, "normalize")
    first = prepare(processor, conversation(str(path)))
    follow_up = prepare(processor, conversation(str(path), turns=3))
    assert (decoded.count, normalised.count) == (1, 1), "the follow-up turn decoded or preprocessed the image again"
    stats = processor.pixel_cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1) and stats.key_seconds > 0
    # bit for bit what the processor makes without a cache, and the same visual item
    plain = prepare(llava.processor, conversation(str(path), turns=3))
    assert plain.pixel_values.dtype == follow_up.pixel_values.dtype
    assert np.array_equal(plain.pixel_values.numpy(), follow_up.pixel_values.numpy())
    assert np.array_equal(first.pixel_values.numpy(), follow_up.pixel_values.numpy())
    assert plain.visual_items == follow_up.visual_items == first.visual_items
    assert plain.input_ids.tolist() == follow_up.input_ids.tolist()


def test_image_bytes_hit_the_entry_of_the_same_file(processor, tmp_path, monkeypatch):
    """The key is the encoded bytes: the same file given as a path or as its bytes is one medium."""
    path = tmp_path / "photo.jpg"
    random_image(120, 90, seed=2).save(path, quality=90)
    decoded = Calls(monkeypatch, image_ops, "open_image")
    by_path = processor.image_pixels(str(path))
    by_bytes = processor.image_pixels(path.read_bytes())
    assert decoded.count == 1
    assert by_path[0] == by_bytes[0] and np.array_equal(by_path[1], by_bytes[1])


def test_another_file_a_replaced_file_or_another_setting_misses(processor, llava, tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    random_image(100, 140, seed=3).save(path)
    first = processor.image_pixels(str(path))
    other = tmp_path / "other.png"
    random_image(100, 140, seed=4).save(other)
    assert not np.array_equal(processor.image_pixels(str(other))[1], first[1])
    random_image(100, 140, seed=5).save(path)  # the same path, new content: keyed by content, not by name
    replaced = processor.image_pixels(str(path))
    assert not np.array_equal(replaced[1], first[1])
    assert np.array_equal(replaced[1], llava.processor.image_pixels(str(path))[1])
    assert processor.pixel_cache.stats().misses == 3 and processor.pixel_cache.stats().hits == 0
    # the same bytes under another processor setting (resampling) is another entry, with other pixels
    visual = llava.config.visual.model_copy(update={"resample": "bilinear"})
    bilinear = LlavaProcessor(llava.config.model_copy(update={"visual": visual}), llava.tokenizer,
                              pixel_cache=processor.pixel_cache)
    decoded = Calls(monkeypatch, image_ops, "open_image")
    assert not np.array_equal(bilinear.image_pixels(str(path))[1], replaced[1])
    assert decoded.count == 1 and processor.pixel_cache.stats().misses == 4
    # an image among several takes the multi-image mode: its own entry, then a hit on the repeat
    two = [{"role": "user", "content": [{"type": "image", "image": str(path)}, {"type": "image", "image": str(path)},
                                        {"type": "text", "text": "Same?"}]}]
    inputs = prepare(processor, two)
    assert processor.pixel_cache.stats().misses == 5 and processor.pixel_cache.stats().hits == 1
    assert np.array_equal(inputs.pixel_values.numpy(), prepare(llava.processor, two).pixel_values.numpy())


def test_callers_cannot_change_an_entry(processor, tmp_path):
    path = tmp_path / "photo.png"
    random_image(80, 80, seed=6).save(path)
    _, crops = processor.image_pixels(str(path))
    assert not crops.flags.writeable
    with pytest.raises(ValueError):
        crops.flags.writeable = True
    with pytest.raises(ValueError):
        crops[0, 0, 0, 0] = 1.0
    expected = crops.copy()
    inputs = prepare(processor, conversation(str(path)))  # the batch is the caller's own copy
    inputs.pixel_values.zero_()
    assert np.array_equal(processor.image_pixels(str(path))[1], expected)


def test_the_cache_stays_within_its_bytes_least_recently_used_first_out(llava, tmp_path):
    paths = []
    for seed in range(4):
        paths.append(tmp_path / f"{seed}.png")
        random_image(64, 64, seed=10 + seed).save(paths[-1])
    entry = llava.processor.image_pixels(str(paths[0]))[1].nbytes
    cache = PixelCache(2 * entry + entry // 2)  # room for two entries
    processor = LlavaProcessor(llava.config, llava.tokenizer, pixel_cache=cache)
    processor.image_pixels(str(paths[0]))
    processor.image_pixels(str(paths[1]))
    processor.image_pixels(str(paths[0]))  # 0 is now the most recently used
    processor.image_pixels(str(paths[2]))  # evicts 1
    stats = cache.stats()
    assert stats.bytes <= cache.max_bytes and (stats.entries, stats.evictions) == (2, 1)
    processor.image_pixels(str(paths[0]))
    assert cache.stats().hits == 2
    processor.image_pixels(str(paths[1]))
    assert cache.stats().misses == 4, "the least recently used entry (1) should have been evicted"
    tiny = LlavaProcessor(llava.config, llava.tokenizer, pixel_cache=PixelCache(entry // 2))
    tiny.image_pixels(str(paths[3]))  # larger than the whole budget: not stored
    assert tiny.pixel_cache.stats().entries == 0 and tiny.pixel_cache.stats().bytes == 0


def test_threads_sharing_the_cache_get_the_pixels_of_their_own_image(llava, tmp_path):
    """The server prepares requests in several threads, all with one processor and one cache."""
    import threading

    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"{seed}.png")
        random_image(50 + 10 * seed, 70, seed=20 + seed).save(paths[-1])
    expected = [llava.processor.image_pixels(str(path))[1] for path in paths]
    entry = max(crops.nbytes for crops in expected)
    processor = LlavaProcessor(llava.config, llava.tokenizer, pixel_cache=PixelCache(2 * entry + entry // 2))
    failures = []

    def work(worker):
        for step in range(12):
            index = (worker + step) % len(paths)  # three images, room for two: entries come and go
            if not np.array_equal(processor.image_pixels(str(paths[index]))[1], expected[index]):
                failures.append((worker, step))

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = processor.pixel_cache.stats()
    assert not failures and stats.hits + stats.misses == 48 and stats.bytes <= stats.max_bytes


def test_errors_still_name_the_file_and_bad_files_are_not_cached(processor, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(MediaError, match=f"image sample 0, image 0 \\({missing}\\): file not found"):
        prepare(processor, conversation(str(missing)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(MediaError, match=f"image sample 0, image 0 \\({broken}\\): not a readable image"):
        prepare(processor, conversation(str(broken)))
    assert processor.pixel_cache.stats().entries == 0


def test_a_repeated_video_file_is_decoded_once(processor, llava, tmp_path, monkeypatch):
    from test_data_fixtures import write_video

    from llavakit.processing import processor as processor_module

    path = write_video(tmp_path / "clip.mp4", frames=6, side=32)
    decoded = Calls(monkeypatch, processor_module, "read_video")
    first = processor.video_pixels(str(path))
    again = processor.video_pixels(str(path))
    assert decoded.count == 1
    plain = llava.processor.video_pixels(str(path))
    assert first[0] == again[0] == plain[0] and np.array_equal(again[1], plain[1])


def test_the_server_decodes_a_repeated_data_url_once(llava, monkeypatch):
    """The server's path: base64 data URLs, headers checked at every request, decoding only on a miss."""
    from llavakit.api import Llava
    from llavakit.serving import media
    from llavakit.serving.errors import APIError
    from llavakit.serving.prepare import RequestPreparer
    from llavakit.serving.protocol import ChatCompletionRequest
    from llavakit.serving.settings import ServerSettings

    out = io.BytesIO()
    random_image(200, 300, seed=7).save(out, "PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()

    def request(text):
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
        return ChatCompletionRequest.model_validate(
            {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": parts}]})

    settings = ServerSettings(model_name="m", max_model_len=8192)
    cached = Llava(llava.model, llava.tokenizer)
    cached.processor.pixel_cache = PixelCache(64 * 2**20)
    decoded = Calls(monkeypatch, media, "load_image")
    headers = Calls(monkeypatch, media, "open_image")
    preparer, plain_preparer = RequestPreparer(cached, settings), RequestPreparer(llava, settings)
    try:
        first = asyncio.run(preparer(request("What is it?")))
        second = asyncio.run(preparer(request("And the colours?")))
        assert decoded.count == 1 and headers.count == 2, "a repeated image must be checked but not decoded"
        plain = asyncio.run(plain_preparer(request("And the colours?")))
        assert np.array_equal(second.inputs.pixel_values.numpy(), plain.inputs.pixel_values.numpy())
        assert np.array_equal(first.inputs.pixel_values.numpy(), plain.inputs.pixel_values.numpy())
        # a refusal stays a refusal with a cache: the header check runs before the cache is asked
        small = ServerSettings(model_name="m", max_model_len=8192,
                               media=media.MediaPolicy(max_image_pixels=100 * 100))
        strict = RequestPreparer(cached, small)
        try:
            with pytest.raises(APIError, match="pixels exceeds the limit"):
                asyncio.run(strict(request("Again?")))
        finally:
            strict.close()
    finally:
        preparer.close()
        plain_preparer.close()


def test_llavakit_chat_decodes_its_image_once(onevision_dir, tmp_path, monkeypatch):
    import sys

    from llavakit.cli import main

    path = tmp_path / "picture.png"
    random_image(60, 80, seed=8).save(path)
    decoded = Calls(monkeypatch, image_ops, "open_image")
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\nAnd the colours?\nAnything else?\n"))
    assert main(["chat", "--model", str(onevision_dir), "--image", str(path), "--max-tokens", "2"]) == 0
    assert decoded.count == 1, "the follow-up turns decoded the image again"
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\nAnd the colours?\n"))
    assert main(["chat", "--model", str(onevision_dir), "--image", str(path), "--max-tokens", "2",
                 "--media-cache-mb", "0"]) == 0
    assert decoded.count == 1 + 3  # off: the attachment's check and every turn decode it
