"""The visual feature cache: a repeated image skips the vision tower, the vectors equal a fresh
encoding bit for bit, anything that changes the vectors misses, and the cache stays within its bytes."""

from __future__ import annotations

import copy
import gc
import threading

import pytest
import torch
from conftest import random_image

import llavakit
from llavakit.layout import token_count
from llavakit.model.feature_cache import FeatureCache, tensor_bytes


@pytest.fixture(scope="module")
def llava(onevision_dir):
    return llavakit.load(onevision_dir)


def one_image(image, text="What is shown?"):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


class TowerCalls:
    """Counts the vision tower's forward calls and the crops they received."""

    def __init__(self, model):
        self.calls, self.crops = 0, 0
        self.handle = model.vision_tower.register_forward_hook(self._seen)

    def _seen(self, module, args, output):
        self.calls += 1
        self.crops += args[0].shape[0]


def embed(llava, conversations, cache=None):
    inputs = llava.prepare(conversations)
    with torch.inference_mode():
        return llava.model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items, feature_cache=cache)


def test_repeated_image_is_served_from_the_cache_without_the_tower(llava):
    image = random_image(90, 120, seed=1)
    first_turn = [one_image(image)]
    follow_up = [one_image(image) + [{"role": "assistant", "content": "A picture."},
                                     {"role": "user", "content": "And the colours?"}]]
    cache = FeatureCache(64 * 2**20)
    tower = TowerCalls(llava.model)
    try:
        embed(llava, first_turn, cache)
        assert tower.calls == 1 and cache.stats().misses == 1 and cache.stats().hits == 0
        got = embed(llava, follow_up, cache)
        assert tower.calls == 1, "the follow-up turn ran the vision tower again"
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
        assert stats.key_seconds > 0
        fresh = embed(llava, follow_up)
        assert tower.calls == 2
    finally:
        tower.handle.remove()
    assert torch.equal(got, fresh)


def test_features_with_the_cache_equal_those_without_bit_for_bit(llava):
    batch = [one_image(random_image(64, 200, seed=2), "Describe it."),  # AnyRes, a wide grid
             [{"role": "user", "content": [{"type": "image", "image": random_image(40, 30, seed=3)},
                                           {"type": "image", "image": random_image(50, 50, seed=4)},
                                           {"type": "text", "text": "Compare."}]}],  # two single-crop items
             [{"role": "user", "content": "No picture here."}]]
    cache = FeatureCache(64 * 2**20)
    without = embed(llava, batch)
    missed = embed(llava, batch, cache)
    assert cache.stats().misses == 3 and cache.stats().hits == 0
    hit = embed(llava, batch, cache)
    assert cache.stats().hits == 3 and cache.stats().misses == 3
    assert torch.equal(missed, without) and torch.equal(hit, without)
    # each entry owns its memory (a view would keep the whole batch's vectors alive beyond the count)
    assert all(t.untyped_storage().nbytes() == tensor_bytes(t) for t in cache._table.values())
    inputs = llava.prepare(batch)
    with torch.inference_mode():  # what the cache returns is the caller's: changing it leaves the entries be
        cache.encode(llava.model, inputs.pixel_values, inputs.visual_items, torch.device("cpu")).zero_()
    assert torch.equal(embed(llava, batch, cache), without)


def test_a_repeat_within_one_batch_is_encoded_once(llava):
    image = random_image(60, 60, seed=5)
    cache = FeatureCache(64 * 2**20)
    tower = TowerCalls(llava.model)
    try:
        got = embed(llava, [one_image(image, "First?"), one_image(image, "Second question?")], cache)
    finally:
        tower.handle.remove()
    item = llava.prepare([one_image(image)]).visual_items[0]
    assert tower.crops == item.num_crops
    assert (cache.stats().misses, cache.stats().hits) == (1, 1)
    assert torch.equal(got, embed(llava, [one_image(image, "First?"), one_image(image, "Second question?")]))


def test_another_image_another_layout_or_another_model_misses(llava):
    image = random_image(80, 100, seed=6)
    cache = FeatureCache(64 * 2**20)
    embed(llava, [one_image(image)], cache)
    assert cache.stats().misses == 1

    changed = image.copy()
    changed.putpixel((0, 0), tuple(255 - v for v in image.getpixel((0, 0))))
    embed(llava, [one_image(changed)], cache)  # one pixel differs
    assert cache.stats().misses == 2 and cache.stats().hits == 0

    # the same image as one of two in a prompt: a single padded crop instead of AnyRes, other vectors
    two = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "image", "image": changed},
                                        {"type": "text", "text": "Both?"}]}]
    embed(llava, [two], cache)
    assert cache.stats().misses == 4 and cache.stats().hits == 0

    # the same image under another visual setting: no newline vectors, so other packed vectors
    visual = llava.config.visual.model_copy(update={"image_newline": "none"})
    other_settings = copy.deepcopy(llava.model)
    other_settings.config = llava.config.model_copy(update={"visual": visual})
    inputs = llava.prepare([one_image(image)])
    items = [type(item)(**{**vars(item), "newline": "none"}) for item in inputs.visual_items]
    with torch.inference_mode():
        features = cache.encode(other_settings, inputs.pixel_values, items, torch.device("cpu"))
    assert features.shape[0] == token_count(items[0], visual, other_settings.tokens_per_side)
    assert cache.stats().misses == 5 and cache.stats().hits == 0

    # the same weights in another dtype
    half = copy.deepcopy(llava.model).to(torch.bfloat16)
    with torch.inference_mode():
        cache.encode(half, inputs.pixel_values.to(torch.bfloat16), inputs.visual_items, torch.device("cpu"))
    assert cache.stats().misses == 6 and cache.stats().hits == 0


def test_the_cache_stays_within_its_bytes_and_evicts_the_least_recently_used(llava):
    images = [random_image(40, 40, seed=10 + i) for i in range(4)]
    entry = llava.config.llm.hidden_size * 4 * token_count(
        llava.prepare([one_image(images[0])]).visual_items[0], llava.config.visual, llava.model.tokens_per_side)
    cache = FeatureCache(2 * entry + entry // 2)  # room for two entries
    seen = []

    def ask(index):
        embed(llava, [one_image(images[index])], cache)
        stats = cache.stats()
        assert stats.bytes <= cache.max_bytes
        assert stats.bytes == sum(tensor_bytes(t) for t in cache._table.values())
        seen.append(stats)

    ask(0)
    ask(1)
    ask(0)  # a hit: 0 becomes the most recently used
    ask(2)  # evicts 1, the least recently used
    assert seen[-1].evictions == 1 and seen[-1].entries == 2
    ask(0)
    assert cache.stats().hits == 2, "image 0 was evicted instead of image 1"
    ask(1)
    assert cache.stats().misses == 4 and cache.stats().evictions == 2

    tiny = FeatureCache(entry // 2)  # an entry larger than the whole budget is not stored
    embed(llava, [one_image(images[3])], tiny)
    assert len(tiny) == 0 and tiny.stats().bytes == 0


def test_threads_sharing_the_cache_see_equal_vectors_and_the_bound_holds(llava):
    images = [random_image(30, 40, seed=20 + i) for i in range(3)]
    expected = [embed(llava, [one_image(im)]) for im in images]
    cache = FeatureCache(2 * 2**20)
    errors = []

    def worker(offset):
        try:
            for step in range(6):
                index = (offset + step) % 3
                assert torch.equal(embed(llava, [one_image(images[index])], cache), expected[index])
                assert cache.stats().bytes <= cache.max_bytes
        except AssertionError as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 18 and stats.hits >= 9


def test_a_freed_model_takes_its_entries_with_it(llava):
    cache = FeatureCache(64 * 2**20)
    other = copy.deepcopy(llava.model)
    inputs = llava.prepare([one_image(random_image(30, 30, seed=30))])
    with torch.inference_mode():
        cache.encode(other, inputs.pixel_values, inputs.visual_items, torch.device("cpu"))
    assert len(cache) == 1
    del other
    gc.collect()
    assert len(cache) == 0 and cache.stats().bytes == 0  # dropped at the next look at the table


def test_size_from_the_command_line_option():
    from argparse import Namespace

    from llavakit.errors import LlavakitError
    from llavakit.serving.feature_cache_option import media_cache_from_args, pixel_cache_from_args

    for build in (media_cache_from_args, pixel_cache_from_args):
        assert build(Namespace(media_cache_mb=0)) is None
        assert build(Namespace(media_cache_mb=1.5)).max_bytes == int(1.5 * 2**20)
        with pytest.raises(LlavakitError, match="--media-cache-mb must be 0 \\(off\\) or positive, got -1"):
            build(Namespace(media_cache_mb=-1))


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_the_commands_check_media_cache_mb_before_loading_the_model(command, capsys, tmp_path):
    from llavakit.cli import main

    assert main([command, "--model", str(tmp_path / "no-model"), "--media-cache-mb", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--media-cache-mb must be 0 (off) or positive, got -1" in err and len(err.strip().splitlines()) == 1


def engine_config():
    """The engine's config class; the tests of the cache under the engine wait for it."""
    try:
        from llavakit.engine import EngineConfig
    except ImportError:
        pytest.skip("this build has no llavakit.engine")
    return EngineConfig


def count_tower_calls(monkeypatch) -> list[int]:
    """Counts ``vision_features`` calls of every model (those the commands build included)."""
    from llavakit.model.llava import LlavaForCausalLM

    calls = []
    original = LlavaForCausalLM.vision_features
    monkeypatch.setattr(LlavaForCausalLM, "vision_features",
                        lambda self, pixels: calls.append(pixels.shape[0]) or original(self, pixels))
    return calls


def test_the_engine_serves_a_follow_up_turn_from_the_cache(llava, monkeypatch):
    EngineConfig = engine_config()
    image = random_image(70, 90, seed=40)
    turn1 = one_image(image)
    cache = FeatureCache(64 * 2**20)
    cached = llavakit.api.Llava(llava.model, llava.tokenizer)
    cached.set_engine(EngineConfig(feature_cache=cache, compile=False))
    plain = llavakit.api.Llava(llava.model, llava.tokenizer)
    plain.set_engine(EngineConfig(compile=False))
    calls = count_tower_calls(monkeypatch)
    first = cached.generate(turn1, max_new_tokens=6)
    turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    second = cached.generate(turn2, max_new_tokens=6)
    assert len(calls) == 1 and (cache.stats().hits, cache.stats().misses) == (1, 1)
    assert second.token_ids == plain.generate(turn2, max_new_tokens=6).token_ids


def test_llavakit_chat_encodes_the_image_once_with_media_cache_mb(monkeypatch, capsys, tmp_path, onevision_dir):
    import io
    import sys

    from llavakit.cli import main

    engine_config()
    path = tmp_path / "picture.png"
    random_image(60, 80, seed=41).save(path)
    calls = count_tower_calls(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\nAnd the colours?\nAnything else?\n"))
    assert main(["chat", "--model", str(onevision_dir), "--image", str(path), "--max-tokens", "4"]) == 0
    assert len(calls) == 1, "the follow-up turns ran the vision tower again"
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\nAnd the colours?\n"))
    assert main(["chat", "--model", str(onevision_dir), "--image", str(path), "--max-tokens", "4",
                 "--media-cache-mb", "0"]) == 0
    assert len(calls) == 3  # off: every turn encodes the image


def test_llavakit_serve_hands_its_cache_to_the_engine():
    import argparse

    from llavakit.serving import server_cli
    from llavakit.serving.feature_cache_option import media_cache_from_args

    engine_config()
    parser = argparse.ArgumentParser()
    server_cli.add_arguments(parser)
    args = parser.parse_args(["--model", "unused", "--media-cache-mb", "8"])
    settings = server_cli.settings_from_args(args, 4096, media_cache_from_args(args))
    assert settings.engine.feature_cache.max_bytes == 8 * 2**20
    off = parser.parse_args(["--model", "unused", "--media-cache-mb", "0"])
    assert server_cli.settings_from_args(off, 4096, media_cache_from_args(off)).engine.feature_cache is None
