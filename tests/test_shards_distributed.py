"""Shards on two gloo processes, each with two DataLoader workers, over three uneven shards (more
ranks × workers than shards): every rank runs the same steps, and no two streams read the same
sample unless resampled."""

from __future__ import annotations

import shutil

import pytest
from torch.utils.data import DataLoader

from mammut.data import CaptionTokenizer, collate_train, image_transform
from mammut.data.shard_dataset import ShardCaptionDataset
from mammut.data.shard_files import expand_shard_patterns, stats_sample_count
from mammut.data.shard_streams import ShardSource

from distributed import on_two_ranks
from shard_runs import fit_on_shards, recorded, write_demo_shards
from tiny_run import scalars


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tiny_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_demo_shards(tiny_demo, root / "train", samples_per_shard=20)  # 20, 20 and 8 samples
    return root


def one_epoch_per_rank(rank: int, folder: str, tokenizer: str) -> dict[bool, list[list[int]]]:
    """The sample ids of each batch this rank's loader gives in one epoch of 48 samples (all of
    them), from a plain shard list and from resampled shards."""
    shards = expand_shard_patterns(f"{folder}/*.tar")[0]
    source = ShardSource("train", tuple(shards), 1.0, tuple(stats_sample_count(s) for s in shards))
    epochs = {}
    for resampled in (False, True):
        data = ShardCaptionDataset([source], CaptionTokenizer.from_file(tokenizer), image_transform(16, train=True),
                                   24, batch_size=4, batches_per_rank=48 // (4 * 2), resampled=resampled,
                                   shuffle_buffer=8, rank=rank, world_size=2)
        loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate_train)
        epochs[resampled] = [batch.image_ids.tolist() for batch in loader]
    return epochs


def test_ranks_and_workers_never_read_the_same_sample(shards, tiny_demo, tmp_path):
    ranks = on_two_ranks(one_epoch_per_rank, tmp_path, str(shards / "train"), str(tiny_demo / "tokenizer.json"))
    plain = [epochs[False] for epochs in ranks]
    assert [len(batches) for batches in plain] == [6, 6]
    ids = [i for batches in plain for batch in batches for i in batch]
    assert len(ids) == 48 and len(set(ids)) == 48  # each of the 48 samples once, across ranks and workers

    resampled = [epochs[True] for epochs in ranks]
    assert [len(batches) for batches in resampled] == [6, 6]
    streams = [resampled[rank][worker::2] for rank in range(2) for worker in range(2)]  # batch i is worker i % 2's
    assert all(a != b for n, a in enumerate(streams) for b in streams[n + 1:])


def test_ddp_on_uneven_shards_and_a_truncated_last_one_runs_the_same_steps_on_every_rank(shards, tiny_demo, tmp_path):
    """A rank that ran out early would leave the other waiting in its all-reduce: the run would hang
    (and time out) instead of finishing. The truncated last shard is a counted skip, not a crash."""
    (tmp_path / "cut").mkdir()
    whole = (shards / "train" / "00001.tar").read_bytes()
    (tmp_path / "cut" / "00003.tar").write_bytes(whole[:len(whole) // 3])
    shutil.copy(shards / "train" / "00001_stats.json", tmp_path / "cut" / "00003_stats.json")
    record = tmp_path / "batches"
    result = fit_on_shards(tiny_demo, tmp_path, f"{shards}/train/*.tar::{tmp_path}/cut/00003.tar",
                           "--data.train_num_samples=48", "--data.num_workers=2", "--trainer.max_steps=12",
                           strategy="ddp", record=record, processes=2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [[batch["step"] for batch in recorded(record, rank)] for rank in range(2)]
    assert steps[0] == steps[1] == list(range(12))  # 6 steps an epoch, 2 epochs
    # the cut sample is one skip, on whichever rank read it (each rank counts its own), named in the log
    assert sum(batch["skipped"] for rank in range(2) for batch in recorded(record, rank)) >= 1
    assert "data/skipped_samples" in scalars(next(tmp_path.glob("pretrain_shards/version_*")))
    assert "cut/00003.tar, key 00001" in result.stderr and "shard is truncated" in result.stderr
