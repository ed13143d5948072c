"""A shuffling sampler, sharded over data-parallel ranks, that a run can resume from mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class ResumableRandomSampler(DistributedSampler):
    """A fresh permutation per epoch from (seed, epoch), so any epoch's order can be rebuilt.

    Under data parallelism rank ``r`` of ``num_replicas`` takes every ``num_replicas``-th index
    of the epoch's permutation, starting at ``r``, so the ranks' shards are disjoint; the tail
    that would leave ranks with unequal counts is dropped. Being a ``DistributedSampler``, it is
    kept as it is by Lightning (``use_distributed_sampler`` wraps only other samplers).

    ``resume(epoch, n)`` makes passes over that epoch start after the first ``n`` indices of the
    whole permutation (all ranks together), which is where an interrupted run stopped. Because
    the shards interleave, the continuation is the same as in the uninterrupted run. The
    reported length stays the whole epoch, so step-based schedules do not shift.
    ``on_epoch`` is told the epoch too (datasets whose samples depend on it).
    """

    def __init__(self, size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0, on_epoch=None):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.size = size
        self.on_epoch = on_epoch
        self._resume_epoch, self._resume_index = -1, 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def resume(self, epoch: int, index: int) -> None:
        self._resume_epoch, self._resume_index = epoch, index

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[:self.total_size]
        start = self._resume_index if self.epoch == self._resume_epoch else 0
        return iter(order[start:][self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
