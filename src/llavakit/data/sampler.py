"""Batch samplers: length-grouped by modality, and packing-aware. Seeded, identical on every rank.

Every rank computes the same global list of batches from (seed, epoch, lengths) alone and takes
every ``world_size``-th batch from ``rank``, so no communication is needed. Skipped samples
(length ``None``) are never scheduled. When the number of batches does not divide by the world
size, the last few are left out of this epoch and listed in ``dropped`` (ranks must run the same
number of steps).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from llavakit.data.dataset import LengthInfo
from llavakit.data.packing import pack_rows


class _Distributed:
    def __init__(self, seed: int, world_size: int, rank: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.seed, self.world_size, self.rank, self.epoch = seed, world_size, rank, 0
        self.dropped: list[list[int]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def global_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def _mine(self) -> list[list[int]]:
        batches = self.global_batches()
        usable = len(batches) - len(batches) % self.world_size
        self.dropped = batches[usable:]
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self.global_batches()) // self.world_size


class LengthGroupedBatchSampler(_Distributed):
    """Batches of one modality and similar length.

    Per modality: shuffle, cut into megabatches of ``batch_size * world_size * group`` samples,
    sort each megabatch by length (longest first) and cut it into batches; then shuffle the order
    of all batches. Grouping by modality keeps video batches apart from text-only ones, and sorting
    inside a megabatch keeps padding small while the order stays random.
    """

    def __init__(self, lengths: Sequence[LengthInfo | None], batch_size: int, seed: int = 0, world_size: int = 1,
                 rank: int = 0, group: int = 16, drop_last: bool = False):
        super().__init__(seed, world_size, rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size, self.group, self.drop_last = list(lengths), batch_size, group, drop_last

    def global_batches(self) -> list[list[int]]:
        rng = self._rng()
        by_modality: dict[str, list[int]] = {}
        for index, info in enumerate(self.lengths):
            if info is not None:
                by_modality.setdefault(info.modality, []).append(index)
        megabatch = self.batch_size * self.world_size * self.group
        batches = []
        for modality in sorted(by_modality):
            order = [by_modality[modality][i] for i in rng.permutation(len(by_modality[modality]))]
            for start in range(0, len(order), megabatch):
                chunk = sorted(order[start:start + megabatch], key=lambda i: -self.lengths[i].total)
                batches += [chunk[b:b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return [batches[i] for i in rng.permutation(len(batches))]


class PackingBatchSampler(_Distributed):
    """Batches of samples planned to fill ``rows`` packed rows of ``capacity`` tokens each.

    Samples are shuffled, planned into rows by first-fit decreasing over windows of ``window``
    samples, and the rows are grouped ``rows`` at a time. The collator packs again from exact
    lengths, so an estimate that was short only costs an extra row.
    """

    def __init__(self, lengths: Sequence[LengthInfo | None], capacity: int, rows: int = 1, seed: int = 0,
                 world_size: int = 1, rank: int = 0, window: int = 1024):
        super().__init__(seed, world_size, rank)
        self.lengths, self.capacity, self.rows, self.window = list(lengths), capacity, rows, window

    def global_batches(self) -> list[list[int]]:
        rng = self._rng()
        valid = [i for i, info in enumerate(self.lengths) if info is not None]
        order = [valid[i] for i in rng.permutation(len(valid))]
        planned: list[list[int]] = []
        for start in range(0, len(order), self.window):
            chunk = order[start:start + self.window]
            rows = pack_rows([self.lengths[i].total for i in chunk], self.capacity)
            planned += [[chunk[i] for i in row] for row in rows]
        planned = [planned[i] for i in rng.permutation(len(planned))]
        return [sum(planned[r:r + self.rows], []) for r in range(0, len(planned), self.rows)]
