"""Which samples each optimizer step sees, independent of the number of processes.

Each step consumes one global batch of ``batch_size`` samples per accumulation step,
split evenly across processes; the order of epoch e is a permutation seeded by
``seed + e``. With ``group_by_length`` each window of 50 batches is sorted by length and
the batches are shuffled again, so a batch holds inputs of similar length (little
padding) while the order stays random.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class EpochOrder:
    def __init__(self, num_samples: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self._cache: tuple[int, Tensor] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def epoch(self, epoch: int) -> Tensor:
        """The sample order of one epoch."""
        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        size = self.batch_size
        if self.lengths is not None:
            chunks = [c[torch.argsort(self.lengths[c], descending=True, stable=True)] for c in order.split(size * 50)]
            grouped = torch.cat(chunks)
            usable = len(grouped) // size * size
            batches = grouped[:usable].view(-1, size)
            order = torch.cat([batches[torch.randperm(len(batches), generator=generator)].reshape(-1), grouped[usable:]])
        self._cache = (epoch, order)
        return order

    def indices(self, micro_index: int, rank: int, world: int) -> list[int]:
        """This rank's share of global micro-batch ``micro_index``."""
        epoch, offset = divmod(micro_index, self.batches_per_epoch)
        size = self.batch_size
        return self.epoch(epoch)[offset * size:(offset + 1) * size].tolist()[rank::world]
