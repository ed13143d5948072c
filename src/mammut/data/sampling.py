"""A shuffling sampler that a run can resume from in the middle of an epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """A fresh permutation per epoch from (seed, epoch), so any epoch's order can be rebuilt.

    ``resume(epoch, n)`` makes passes over that epoch start after the first ``n`` indices of
    its permutation, which is where an interrupted run stopped. The reported length stays the
    whole epoch, so step-based schedules (validation interval, logging) do not shift.
    ``on_epoch`` is told the epoch too (datasets whose samples depend on it).
    """

    def __init__(self, size: int, seed: int = 0, on_epoch=None):
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.on_epoch = on_epoch
        self._resume_epoch, self._resume_index = -1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def resume(self, epoch: int, index: int) -> None:
        self._resume_epoch, self._resume_index = epoch, index

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        start = self._resume_index if self.epoch == self._resume_epoch else 0
        return iter(torch.randperm(self.size, generator=generator)[start:].tolist())

    def __len__(self) -> int:
        return self.size
