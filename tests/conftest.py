"""Shared fixtures: tiny transformers checkpoints built once per session, and transformers' processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.tiny import checkpoints


def hf_processor_class_check_off() -> None:
    """transformers' ProcessorMixin refuses to build without torchvision (its class check looks up the
    video-processor registry, which is a stub then). Our tests use the PIL image processors only."""
    from transformers.processing_utils import ProcessorMixin

    ProcessorMixin.check_argument_for_proper_class = lambda *args, **kwargs: None


@pytest.fixture(scope="session")
def onevision_dir(tmp_path_factory):
    return checkpoints.build_onevision(tmp_path_factory.mktemp("tiny") / "onevision", seed=0)


@pytest.fixture(scope="session")
def next_dir(tmp_path_factory):
    return checkpoints.build_next(tmp_path_factory.mktemp("tiny") / "next", seed=1)


@pytest.fixture(scope="session")
def llava15_dir(tmp_path_factory):
    return checkpoints.build_llava(tmp_path_factory.mktemp("tiny") / "llava15", seed=2)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A noisy image with structure (gradients + noise) so resampling differences would show."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], axis=-1)
    noise = rng.integers(0, 64, size=(height, width, 3))
    return Image.fromarray(((base + noise) % 256).astype(np.uint8))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Entry points called in-process set torch's intra-op threads for their own process (the
    benchmarks take 1 on a CPU, `--threads` does what it says); restore the count after each test
    so no later test runs on one core (the quickstart fixture did: 1.7x slower, past its timeout)."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
