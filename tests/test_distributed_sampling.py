"""ResumableRandomSampler sharded over data-parallel ranks, and resumed mid-epoch."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from mammut.data.sampling import ResumableRandomSampler


def shards(size: int, ranks: int, epoch: int = 0, resume_at: int | None = None) -> list[list[int]]:
    samplers = [ResumableRandomSampler(size, seed=3, num_replicas=ranks, rank=r) for r in range(ranks)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
        if resume_at is not None:
            sampler.resume(epoch, resume_at)
    return [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_ranks_draw_disjoint_shards_of_one_permutation(ranks):
    parts = shards(50, ranks)
    drawn = [i for part in parts for i in part]
    assert len(drawn) == len(set(drawn)) == 50 // ranks * ranks
    assert {len(part) for part in parts} == {50 // ranks}
    assert set(drawn) <= set(range(50))
    assert sorted(shards(50, 1)[0]) == list(range(50))


def test_epochs_are_shuffled_differently_and_reproducibly():
    assert shards(50, 2, epoch=0) != shards(50, 2, epoch=1)
    assert shards(50, 2, epoch=1) == shards(50, 2, epoch=1)


@pytest.mark.parametrize("ranks", [1, 2])
def test_resume_continues_each_shard_where_it_stopped(ranks):
    """A run stopped after 4 batches of 3 per rank resumes after 4 * 3 * ranks samples."""
    whole = shards(48, ranks, epoch=2)
    resumed = shards(48, ranks, epoch=2, resume_at=4 * 3 * ranks)
    for rank in range(ranks):
        assert resumed[rank] == whole[rank][12:]


def test_resume_applies_to_its_epoch_only():
    sampler = ResumableRandomSampler(20, num_replicas=2, rank=0)
    sampler.resume(0, 10)
    sampler.set_epoch(1)
    assert len(list(sampler)) == 10 == len(sampler)


def test_lightning_keeps_it_as_the_distributed_sampler():
    # Lightning replaces the sampler of a training loader under DDP unless it is a DistributedSampler.
    assert isinstance(ResumableRandomSampler(10), DistributedSampler)
