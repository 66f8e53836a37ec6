"""`open_image` under threads: truncated PNG and JPEG files are refused, and PIL's process-wide
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched (a toggle per call races with other threads)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from llavakit.errors import MediaError
from llavakit.processing.image import open_image

LIMIT = 50_000_000


def noise(size: int, seed: int) -> Image.Image:
    """Noise compresses badly, so decoding takes a while and a cut file misses most of its data."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    out = {}
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        whole = folder / f"whole.{suffix}"
        noise(600, 1).save(whole, fmt)
        cut = folder / f"cut.{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        out[fmt] = whole, cut
    return out


def test_truncated_png_and_jpeg_are_refused_from_many_threads(files):
    jobs = [(fmt, kind) for _ in range(8) for fmt in files for kind in (0, 1)]

    def attempt(job):
        fmt, kind = job
        path = files[fmt][kind]
        try:
            return open_image(path, LIMIT).size
        except MediaError as err:
            return str(err)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, jobs))
    for (fmt, kind), result in zip(jobs, results):
        if kind == 0:
            assert result == (600, 600), (fmt, result)
        else:
            assert "truncated or corrupt" in result and f"cut.{'png' if fmt == 'PNG' else 'jpg'}" in result
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_the_process_wide_flag_is_never_toggled(files, monkeypatch):
    """An application that accepts truncated images (the flag set True) keeps that setting while
    llavakit decodes in other threads: its own decodes of a cut file never start to fail."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    whole_jpeg, cut_jpeg = files["JPEG"]
    busy = threading.Event()

    def decode_many():
        busy.set()
        for _ in range(6):
            open_image(whole_jpeg, LIMIT)
            open_image(files["PNG"][0], LIMIT)

    workers = [threading.Thread(target=decode_many) for _ in range(3)]
    for worker in workers:
        worker.start()
    busy.wait()
    seen, failures = set(), 0
    while any(worker.is_alive() for worker in workers):
        seen.add(ImageFile.LOAD_TRUNCATED_IMAGES)
        try:
            with Image.open(cut_jpeg) as image:
                image.load()  # the application's own partial decode, allowed by its setting
        except OSError:
            failures += 1
    for worker in workers:
        worker.join()
    assert seen == {True} and failures == 0
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
