"""A run on shards resumed from a mid-epoch checkpoint sees the batches the uninterrupted run saw
from that step on: it does not read the epoch's first samples again, and its step count, learning
rate schedule and mix of weighted sources continue.

It runs under FSDP2 (Lightning's ModelParallelStrategy), which restores a checkpoint after the
strategy's set-up, with an epoch-based run (``max_epochs``), whose schedule length Lightning
estimates from the training loader: had ``configure_optimizers`` asked for that length, the loader
would have been built before the data position was restored, and the resumed run would have
started its epoch again (Lightning issue #20550)."""

from __future__ import annotations

import pytest

from shard_runs import fit_on_shards, recorded, write_demo_shards
from tiny_run import scalars

pytestmark = pytest.mark.slow


def test_a_resumed_run_continues_where_the_interrupted_one_stopped(tiny_demo, tmp_path):
    write_demo_shards(tiny_demo, tmp_path / "a", samples_per_shard=20)  # 48 samples: 20, 20, 8
    write_demo_shards(tiny_demo, tmp_path / "b", samples_per_shard=20, split="val", first_shard=10)  # 24: 20, 4
    shards = f"{tmp_path}/a/*.tar::{tmp_path}/b/*.tar"
    # Two sources weighted 2:1, 32 samples an epoch in batches of 4: 8 steps, 2 epochs, 2 workers.
    common = ["--data.source_weights=[2,1]", "--data.train_num_samples=32", "--data.num_workers=2",
              "--trainer.max_steps=-1", "--trainer.max_epochs=2", "--model.warmup_steps=3"]
    whole = tmp_path / "whole"
    whole.mkdir()
    result = fit_on_shards(tiny_demo, whole, shards, *common, "--trainer.logger.init_args.version=0",
                           strategy="fsdp2", record=whole / "batches")
    assert result.returncode == 0, result.stderr[-3000:]
    uninterrupted = {batch["step"]: batch for batch in recorded(whole / "batches")}
    assert sorted(uninterrupted) == list(range(16))

    checkpoint = whole / "pretrain_shards" / "version_0" / "checkpoints" / "step=10.ckpt"  # epoch 1, 2 steps in
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    result = fit_on_shards(tiny_demo, resumed_dir, shards, *common, f"--ckpt_path={checkpoint}",
                           strategy="fsdp2", record=resumed_dir / "batches")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = recorded(resumed_dir / "batches")

    assert [batch["step"] for batch in resumed] == list(range(10, 16))
    for batch in resumed:
        expected = uninterrupted[batch["step"]]
        assert batch["epoch"] == expected["epoch"] == 1
        assert batch["ids"] == expected["ids"], batch["step"]  # the same samples, from both sources
        assert batch["lr"] == pytest.approx(expected["lr"], rel=1e-9)  # the schedule continues
    # The epoch's first batches are not seen again: no sample of steps 8 and 9 comes back (the
    # plain shard lists hold more than the epoch asks of each stream).
    start_of_epoch = {i for step in (8, 9) for i in uninterrupted[step]["ids"]}
    assert not start_of_epoch & {i for batch in resumed for i in batch["ids"]}
    from_b = sum(i >= 1000 for batch in resumed for i in batch["ids"])  # b's keys are 0001000 and on
    assert 0.15 < from_b / (6 * 4) < 0.55  # a third, by the weights

    # A checkpoint at the end of an epoch (step 8 ends epoch 0) goes on with the next epoch's batches.
    at_epoch_end = tmp_path / "at_epoch_end"
    at_epoch_end.mkdir()
    checkpoint = whole / "pretrain_shards" / "version_0" / "checkpoints" / "step=8.ckpt"
    result = fit_on_shards(tiny_demo, at_epoch_end, shards, *common, f"--ckpt_path={checkpoint}",
                           strategy="fsdp2", record=at_epoch_end / "batches")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = recorded(at_epoch_end / "batches")
    assert [batch["step"] for batch in resumed] == list(range(8, 16))
    assert [batch["ids"] for batch in resumed] == [uninterrupted[step]["ids"] for step in range(8, 16)]


def test_adaptive_mixing_of_shard_sources_draws_whole_batches_and_resumes_exactly(tiny_demo, tmp_path):
    """Two named shard sources drawn per batch by weights that follow learning progress: each batch
    holds one source's samples, and a run resumed mid-epoch draws the same sources, reads the same
    samples and logs the same weights as the uninterrupted run."""
    write_demo_shards(tiny_demo, tmp_path / "a", samples_per_shard=20)  # 48 samples, ids below 1000
    write_demo_shards(tiny_demo, tmp_path / "b", samples_per_shard=20, split="val", first_shard=10)  # 24, 1000 on
    shards = f"{tmp_path}/a/*.tar::{tmp_path}/b/*.tar"
    common = ["--data.source_weights=[1,1]", "--data.source_names=[clean,other]", "--data.mixing=adaptive",
              "--data.adaptive.warmup=2", "--data.adaptive.signal=loss", "--data.train_num_samples=40",
              "--data.num_workers=1", "--trainer.max_steps=14", "--model.warmup_steps=3"]
    whole = tmp_path / "whole"
    whole.mkdir()
    result = fit_on_shards(tiny_demo, whole, shards, *common, "--trainer.logger.init_args.version=0",
                           record=whole / "batches")
    assert result.returncode == 0, result.stderr[-3000:]
    uninterrupted = {batch["step"]: batch for batch in recorded(whole / "batches")}
    assert sorted(uninterrupted) == list(range(14))  # 10 steps an epoch: the streams go on into the next
    sources = [{i >= 1000 for i in batch["ids"]} for batch in uninterrupted.values()]
    assert all(len(s) == 1 for s in sources) and {True, False} == set().union(*sources)  # whole batches, both
    logged = scalars(whole / "pretrain_shards" / "version_0")
    assert {"train/sources/clean/weight", "train/sources/other/weight"} <= set(logged)

    checkpoint = whole / "pretrain_shards" / "version_0" / "checkpoints" / "step=6.ckpt"
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    result = fit_on_shards(tiny_demo, resumed_dir, shards, *common, f"--ckpt_path={checkpoint}",
                           "--trainer.logger.init_args.version=0", record=resumed_dir / "batches")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = recorded(resumed_dir / "batches")
    assert [batch["step"] for batch in resumed] == list(range(6, 14))
    assert [batch["ids"] for batch in resumed] == [uninterrupted[step]["ids"] for step in range(6, 14)]
    after = scalars(resumed_dir / "pretrain_shards" / "version_0")["train/sources/clean/weight"]
    assert after == pytest.approx([(step, w) for step, w in logged["train/sources/clean/weight"] if step > 6])
