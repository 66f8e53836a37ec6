"""``--media-cache-mb`` of ``llavakit serve`` and ``llavakit chat``: the media caches they build.

Two caches, each given the whole ``--media-cache-mb``: the visual features (model/feature_cache.py,
on the model's device: a repeated medium skips the vision tower) and the preprocessed pixels
(processing/pixel_cache.py, in host memory: a repeated medium skips decoding and preprocessing).
They live in different memories (GPU and host on a GPU server), so neither's budget is taken from the
other's, and one number still bounds each.

Kept apart from both commands so ``llavakit chat`` does not import the server's modules.
"""

from __future__ import annotations

import argparse

from llavakit.errors import LlavakitError
from llavakit.model.feature_cache import FeatureCache
from llavakit.processing.pixel_cache import PixelCache

DEFAULT_MEDIA_CACHE_MB = 512.0


def add_media_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--media-cache-mb`` (``llavakit serve`` and ``llavakit chat``): the size of each media cache."""
    parser.add_argument("--media-cache-mb", type=float, default=DEFAULT_MEDIA_CACHE_MB, metavar="MB",
                        help="MiB of visual features kept on the model's device, and MiB of preprocessed pixels "
                             "kept in host memory (least recently used dropped first), so an image sent again, in "
                             "a follow-up turn or another request, is neither decoded nor preprocessed nor run "
                             f"through the vision tower again; 0 = off (default {DEFAULT_MEDIA_CACHE_MB:g})")


def _budget(args: argparse.Namespace) -> int | None:
    """Each cache's size in bytes, or None for 0 (off)."""
    megabytes = args.media_cache_mb
    if megabytes < 0:
        raise LlavakitError(f"--media-cache-mb must be 0 (off) or positive, got {megabytes:g}")
    return int(megabytes * 2**20) if megabytes else None


def media_cache_from_args(args: argparse.Namespace) -> FeatureCache | None:
    """The cache ``--media-cache-mb`` asks for (None: off); the engine passes it to ``model.embed``."""
    budget = _budget(args)
    return FeatureCache(budget) if budget else None


def pixel_cache_from_args(args: argparse.Namespace) -> PixelCache | None:
    """The preprocessed-pixel cache ``--media-cache-mb`` asks for (None: off), for ``llava.processor.pixel_cache``."""
    budget = _budget(args)
    return PixelCache(budget) if budget else None
