"""Batches built ahead of the step that trains on them (``data.num_workers``).

A step's micro-batches (decode, crop, normalise, tokenize, collate) are built in worker processes
through torch's ``DataLoader`` while the training process runs the step before: on a CPU the
model's threads and the workers share the cores, on a GPU the data no longer waits for the
device. The steps come in order and the batches are the ones the training process would have
built itself (building a batch draws no random number), so a run trains the same with or
without workers.

Workers are forked, so they start with the trainer's dataset as it is (its caches included)
without pickling it; each keeps its own decoded-media cache for the whole run.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch

# Steps each worker builds ahead: enough to hide one slow step, little memory held.
STEPS_AHEAD = 2


class _Steps(torch.utils.data.Dataset):
    """Step number -> that step's micro-batches, as ``build`` makes them."""

    def __init__(self, build: Callable[[int], Any], stop: int):
        self.build, self.stop = build, stop

    def __len__(self) -> int:
        return self.stop

    def __getitem__(self, step: int) -> Any:
        try:
            return self.build(step)
        except Exception as err:  # raised again, as it is, in the training process
            return _Failed(err)


class _Failed:
    """A worker's error, sent back as a value: the DataLoader would wrap it in a traceback, and a
    bad sample is one line naming the sample (as without workers)."""

    def __init__(self, error: Exception):
        try:
            pickle.dumps(error)
        except Exception:  # an error that cannot cross processes keeps its type's name and message
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


def _as_built(batches: Any) -> Any:
    return batches


def _in_order(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    for batches in loader:
        if isinstance(batches, _Failed):
            raise batches.error
        yield batches


def step_batches(build: Callable[[int], Any], start: int, stop: int, workers: int) -> Iterator[Any]:
    """``build(step)`` for steps ``start .. stop-1`` in order, by ``workers`` (>= 1) forked worker
    processes, each building ``STEPS_AHEAD`` steps ahead. (With no workers the trainer builds each
    step's batches itself.)"""
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("data.num_workers needs forked worker processes, which this platform lacks: "
                           "set data.num_workers: 0")
    # The tokenizer's own thread pool must not be used across a fork (it would deadlock).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = torch.utils.data.DataLoader(
        _Steps(build, stop), sampler=range(start, stop), batch_size=None, collate_fn=_as_built,
        num_workers=workers, prefetch_factor=STEPS_AHEAD, multiprocessing_context="fork",
    )
    return _in_order(loader)
