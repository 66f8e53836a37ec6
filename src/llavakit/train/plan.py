"""The order of samples: a pure function of (seed, epoch), split into global batches and shares.

Every process computes the same plan, so the data position is one number (the optimizer step)
and resuming means skipping that many global batches, with nothing loaded. A global batch is cut
into equal contiguous shares per process, and each share into micro-batches; the loss is
normalised by the token count of the whole global batch, so one process and N processes with the
same global batch compute the same update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MEGA_BATCHES = 16  # length grouping sorts within windows of this many global batches


@dataclass(frozen=True)
class BatchPlan:
    usable: tuple[int, ...] | range  # dataset indices that passed the length pre-pass (a range: all of them)
    lengths: tuple[int, ...]  # total tokens per usable sample
    multimodal: tuple[bool, ...]  # has an image or video
    global_batch: int
    micro_batch: int
    world_size: int
    seed: int
    group_by_length: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        share = self.global_batch // self.world_size
        if self.global_batch % self.world_size or share % self.micro_batch:
            raise ValueError(
                f"global batch {self.global_batch} must split into {self.world_size} process shares that are "
                f"multiples of the micro batch {self.micro_batch}"
            )

    @property
    def accumulation(self) -> int:
        return self.global_batch // self.world_size // self.micro_batch

    @property
    def steps_per_epoch(self) -> int:
        return len(self.usable) // self.global_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Global batches of one epoch (the incomplete last one is dropped)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.usable))
        if self.group_by_length:
            order = self._grouped(order, rng)
        batches = [order[i:i + self.global_batch] for i in range(0, self.steps_per_epoch * self.global_batch,
                                                                  self.global_batch)]
        if self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [[self.usable[int(j)] for j in batch] for batch in batches]

    def _grouped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Within windows of MEGA_BATCHES global batches, sort by (modality, length): batches of
        like samples waste less padding and never mix text-only rows into image batches needlessly."""
        window = self.global_batch * MEGA_BATCHES
        lengths, modal = np.asarray(self.lengths), np.asarray(self.multimodal)
        pieces = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            pieces.append(chunk[np.lexsort((-lengths[chunk], ~modal[chunk]))])
        return np.concatenate(pieces) if pieces else order

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This process's micro-batches for optimizer step ``step`` (counted from 0 over epochs)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch not in self._cache:
            self._cache.clear()  # one epoch at a time
            self._cache[epoch] = self.epoch_batches(epoch)
        batch = self._cache[epoch][within]
        share = self.global_batch // self.world_size
        mine = batch[rank * share:(rank + 1) * share]
        return [mine[i:i + self.micro_batch] for i in range(0, share, self.micro_batch)]
