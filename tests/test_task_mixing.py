"""TaskMixer: tasks drawn by weight, the same on every rank and in every process, each task's loader
cycling on its own, and an exact resume from (epoch, steps done)."""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys
from collections import Counter

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from mammut.data.sampling import ResumableRandomSampler
from mammut.data.task_mixing import TaskMixer, task_schedule

from conftest import REPO
from distributed import on_two_ranks

# Sample ids: the tasks' datasets hold disjoint ranges of them.
TASK_SIZES = {"pretrain": 24, "vqa": 40}  # 3 and 5 batches of 4 per rank of 2; 6 and 10 on one rank
FIRST_ID = {"pretrain": 0, "vqa": 1000}
WEIGHTS = {"pretrain": 0.5, "vqa": 0.5}


def task_loader(task: str, seed: int = 7, num_replicas: int = 1, rank: int = 0, batch_size: int = 4,
                on_epoch=None) -> DataLoader:
    size = TASK_SIZES[task]
    dataset = TensorDataset(torch.arange(FIRST_ID[task], FIRST_ID[task] + size))
    sampler = ResumableRandomSampler(size, seed=seed, num_replicas=num_replicas, rank=rank, on_epoch=on_epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=0)


def mixer(seed: int = 0, steps_per_epoch: int | None = None, weights=WEIGHTS, **shard) -> TaskMixer:
    return TaskMixer({task: task_loader(task, **shard) for task in TASK_SIZES}, weights, seed=seed,
                     steps_per_epoch=steps_per_epoch)


def take(mixer: TaskMixer, steps: int) -> list[tuple[str, tuple[int, ...]]]:
    """The next ``steps`` steps as (task, sample ids), over as many passes as that takes."""
    steps_taken = []
    while len(steps_taken) < steps:
        for batches in mixer:
            (task, (ids,)), = batches.items()
            steps_taken.append((task, tuple(ids.tolist())))
            if len(steps_taken) == steps:
                break
    return steps_taken


# The schedule

@pytest.mark.parametrize("weights", [{"pretrain": 0.7, "vqa": 0.3}, {"caption": 5, "vqa": 3, "detection": 2}])
@pytest.mark.parametrize("seed,epoch", [(0, 0), (1, 0), (0, 5)])
def test_schedule_hits_the_weights_within_two_points(weights, seed, epoch):
    counts = Counter(task_schedule(weights, seed, epoch, 10_000))
    total = sum(weights.values())
    for task, weight in weights.items():
        assert counts[task] / 10_000 == pytest.approx(weight / total, abs=0.02)


def test_schedule_is_reproducible_and_changes_with_seed_and_epoch():
    schedule = task_schedule({"pretrain": 0.7, "vqa": 0.3}, seed=0, epoch=0, steps=200)
    assert task_schedule({"pretrain": 0.7, "vqa": 0.3}, seed=0, epoch=0, steps=200) == schedule
    # The order of the weights in a config does not matter.
    assert task_schedule({"vqa": 0.3, "pretrain": 0.7}, seed=0, epoch=0, steps=200) == schedule
    assert task_schedule({"pretrain": 0.7, "vqa": 0.3}, seed=1, epoch=0, steps=200) != schedule
    assert task_schedule({"pretrain": 0.7, "vqa": 0.3}, seed=0, epoch=1, steps=200) != schedule


def test_schedule_is_the_same_in_another_python_process():
    """A string seed hashed with SHA-256, not hash(): another process, with another hash salt, agrees."""
    code = ("from mammut.data.task_mixing import task_schedule; "
            "print(','.join(task_schedule({'pretrain': 0.7, 'vqa': 0.3}, 3, 2, 300)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    printed = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert printed.split(",") == task_schedule({"pretrain": 0.7, "vqa": 0.3}, 3, 2, 300)


# The mixer

def test_mixer_yields_one_task_per_step_as_scheduled():
    mixed = mixer(seed=4)
    assert len(mixed) == 6 + 10  # one rank: 24 / 4 and 40 / 4 batches
    steps = take(mixed, 32)
    schedule = task_schedule(WEIGHTS, 4, 0, 16) + task_schedule(WEIGHTS, 4, 1, 16)
    assert [task for task, _ in steps] == schedule
    for task, ids in steps:
        assert len(ids) == 4
        assert all(FIRST_ID[task] <= i < FIRST_ID[task] + TASK_SIZES[task] for i in ids)
    assert mixed.steps_per_task == Counter(schedule)
    assert (mixed.epoch, mixed.steps_done) == (1, 16)


def test_steps_per_epoch_sets_the_length_of_a_pass():
    mixed = mixer(steps_per_epoch=7)
    assert len(mixed) == 7
    assert len(list(mixed)) == 7 == len(list(mixed))
    assert mixed.epoch == 1


def test_ranks_draw_the_same_tasks_but_different_batches():
    ranks = [take(mixer(seed=2, num_replicas=2, rank=rank), 40) for rank in (0, 1)]  # 5 epochs of 8 steps
    assert [task for task, _ in ranks[0]] == [task for task, _ in ranks[1]]
    for (_, ids0), (_, ids1) in zip(*ranks):
        assert not set(ids0) & set(ids1)


def test_each_task_cycles_through_its_sampler_epochs():
    """Over several mixer epochs, each task's batches are its loader's epochs 0, 1, 2, ... in turn."""
    epochs_started = {task: [] for task in TASK_SIZES}
    mixed = TaskMixer({task: task_loader(task, on_epoch=epochs_started[task].append) for task in TASK_SIZES},
                      {"pretrain": 3, "vqa": 1}, seed=5)
    steps = take(mixed, 6 * len(mixed))
    for task in TASK_SIZES:
        drawn = [ids for name, ids in steps if name == task]
        loader = task_loader(task)
        expected = []
        for epoch in range(len(drawn) // len(loader) + 1):
            loader.sampler.set_epoch(epoch)
            expected += [tuple(ids.tolist()) for ids, in loader]
        assert len(drawn) > 2 * len(loader)  # each task ran out at least twice
        assert drawn == expected[:len(drawn)]
        # Each sampler epoch is started once: the mixer's own epochs do not restart a task's loader.
        assert epochs_started[task] == list(range(math.ceil(len(drawn) / len(loader))))
    # Epochs are reshuffled, not repeated.
    pretrain = [ids for name, ids in steps if name == "pretrain"]
    assert pretrain[:6] != pretrain[6:12] and sorted(pretrain[:6]) != sorted(pretrain[6:12])


def test_a_pass_cut_short_is_continued_by_the_next():
    mixed = mixer(seed=1)
    uninterrupted = take(mixer(seed=1), 20)
    assert take(mixed, 3) + take(mixed, 17) == uninterrupted


def test_set_epoch_jumps_to_the_start_of_an_epoch_as_if_the_earlier_ones_had_run():
    uninterrupted = take(mixer(seed=3), 3 * 16)
    jumped = mixer(seed=3)
    jumped.set_epoch(2)
    assert take(jumped, 16) == uninterrupted[32:]


# Every task at every step

def every_task_mixer(steps_per_epoch: int | None = None, **shard) -> TaskMixer:
    return TaskMixer({task: task_loader(task, **shard) for task in TASK_SIZES}, seed=0,
                     steps_per_epoch=steps_per_epoch, mixing="all")


def take_every_task(mixer: TaskMixer, steps: int) -> list[dict[str, tuple[int, ...]]]:
    taken = []
    while len(taken) < steps:
        for batches in mixer:
            taken.append({task: tuple(ids.tolist()) for task, (ids,) in batches.items()})
            if len(taken) == steps:
                break
    return taken


def test_mixing_all_gives_each_task_its_own_batches_in_order_at_every_step():
    mixed = every_task_mixer()
    assert len(mixed) == 10  # the longer loader's length: 40 / 4 batches
    steps = take_every_task(mixed, 25)
    assert all(sorted(step) == ["pretrain", "vqa"] for step in steps)
    for task in TASK_SIZES:  # each task's stream, unbroken: its loader's epochs one after another
        alone = [tuple(ids.tolist()) for epoch in range(5) for (ids,) in epoch_of(task_loader(task), epoch)]
        assert [step[task] for step in steps] == alone[:25]
    assert mixed.steps_per_task == {"pretrain": 25, "vqa": 25}


def epoch_of(loader: DataLoader, epoch: int):
    loader.sampler.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("steps_before", [4, 10, 23])
def test_mixing_all_resumes_where_it_was(steps_before):
    uninterrupted = take_every_task(every_task_mixer(steps_per_epoch=7, num_replicas=2, rank=1), 30)
    interrupted = every_task_mixer(steps_per_epoch=7, num_replicas=2, rank=1)
    take_every_task(interrupted, steps_before)
    resumed = every_task_mixer(steps_per_epoch=7, num_replicas=2, rank=1)
    resumed.load_state_dict(interrupted.state_dict())
    assert take_every_task(resumed, 30 - steps_before) == uninterrupted[steps_before:]


def test_mixing_all_takes_no_weights():
    with pytest.raises(ValueError, match="task_weights"):
        TaskMixer({task: task_loader(task) for task in TASK_SIZES}, WEIGHTS, mixing="all")
    with pytest.raises(ValueError, match="mixing must be one of"):
        TaskMixer({task: task_loader(task) for task in TASK_SIZES}, WEIGHTS, mixing="round-robin")


# Resume

@pytest.mark.parametrize("steps_before", [5, 13, 16, 37], ids=lambda k: f"after {k} steps")
@pytest.mark.parametrize("ranks", [1, 2])
def test_resume_yields_what_the_uninterrupted_run_would_have(steps_before, ranks):
    """13 steps per epoch: 5 is mid epoch 0, 13 its end, 16 and 37 mid epochs 1 and 2."""
    for rank in range(ranks):
        shard = {"num_replicas": ranks, "rank": rank}
        uninterrupted = take(mixer(seed=9, steps_per_epoch=13, **shard), 60)
        interrupted = mixer(seed=9, steps_per_epoch=13, **shard)
        take(interrupted, steps_before)
        saved = io.BytesIO()
        torch.save(interrupted.state_dict(), saved)
        saved.seek(0)

        resumed = mixer(seed=9, steps_per_epoch=13, **shard)
        resumed.load_state_dict(torch.load(saved, weights_only=True))
        assert resumed.steps_per_task == Counter(task for task, _ in uninterrupted[:steps_before])
        assert take(resumed, 60 - steps_before) == uninterrupted[steps_before:]


def test_resuming_with_other_weights_is_reported(caplog):
    interrupted = mixer()
    take(interrupted, 3)
    resumed = mixer(weights={"pretrain": 0.9, "vqa": 0.1})
    with caplog.at_level(logging.WARNING, logger="mammut.data.task_mixing"):
        resumed.load_state_dict(interrupted.state_dict())
    assert "different setup" in caplog.text and "'pretrain': 0.9" in caplog.text


class Recorder(L.LightningModule):
    """Trains nothing; records the (task, sample ids) of every step."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def training_step(self, batches, batch_index):
        (task, (ids,)), = batches.items()
        self.seen.append((task, tuple(ids.tolist())))
        return self.layer(ids.float()[:, None]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class MixedData(L.LightningDataModule):
    """Builds the mixer in train_dataloader(). Reloaded, it carries the previous mixer's position
    over; a checkpoint restores it through Lightning's fit loop, which saves stateful loaders."""

    def __init__(self):
        super().__init__()
        self.mixer: TaskMixer | None = None

    def train_dataloader(self) -> TaskMixer:
        previous, self.mixer = self.mixer, mixer(seed=6, steps_per_epoch=8)
        if previous is not None:
            self.mixer.load_state_dict(previous.state_dict())
        return self.mixer


def fit(folder, ckpt_path=None, reload_every_epoch: bool = False) -> list:
    recorder = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=folder,
                        reload_dataloaders_every_n_epochs=int(reload_every_epoch),
                        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=4, save_top_k=-1)])
    trainer.fit(recorder, datamodule=MixedData(), ckpt_path=ckpt_path)
    assert trainer.num_training_batches == 8
    return recorder.seen


@pytest.mark.parametrize("steps_before", [4, 8, 12], ids=["mid epoch 0", "end of epoch 0", "mid epoch 1"])
def test_lightning_saves_the_mixer_and_resumes_it(tmp_path, steps_before):
    """A stateful iterable is saved in the fit loop's "combined_loader" state and restored before its first batch."""
    uninterrupted = fit(tmp_path)
    assert len(uninterrupted) == 24
    [saved] = tmp_path.glob(f"epoch=*-step={steps_before}.ckpt")
    state = torch.load(saved, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert 8 * state[0]["epoch"] + state[0]["steps_done"] == steps_before and 0 < state[0]["steps_done"] <= 8
    resumed = fit(tmp_path / "resumed", ckpt_path=saved)
    assert resumed == uninterrupted[steps_before:]


def test_reloaded_each_epoch_the_mixer_goes_on_where_it_was(tmp_path):
    assert fit(tmp_path / "reloaded", reload_every_epoch=True) == fit(tmp_path / "once")


# Two processes joined by gloo, as the ranks of a data-parallel job

def _tasks_on_rank(rank: int) -> dict:
    mixed = mixer(seed=11, num_replicas=2, rank=rank)
    steps = take(mixed, 48)
    # Every step, the ranks compare the task they drew.
    agreed = []
    for task, _ in steps:
        drawn = torch.tensor([mixed.tasks.index(task)])
        both = [torch.zeros_like(drawn) for _ in range(2)]
        dist.all_gather(both, drawn)
        agreed.append(both[0].item() == both[1].item())
    return {"steps": steps, "agreed": agreed}


@pytest.mark.slow
def test_two_processes_draw_the_same_task_at_every_step(tmp_path):
    ranks = on_two_ranks(_tasks_on_rank, tmp_path)
    assert all(ranks[0]["agreed"]) and all(ranks[1]["agreed"]) and len(ranks[0]["agreed"]) == 48
    assert [task for task, _ in ranks[0]["steps"]] == [task for task, _ in ranks[1]["steps"]]
    assert all(not set(a) & set(b) for (_, a), (_, b) in zip(ranks[0]["steps"], ranks[1]["steps"]))


# Errors

@pytest.mark.parametrize("weights,message", [
    ({"pretrain": 0.5, "vqa": 0.5, "video": 1.0}, r"unknown task\(s\) \['video'\]"),
    ({"pretrain": 1.0}, r"task\(s\) \['vqa'\] have no mixing weight"),
    ({"pretrain": 1.0, "vqa": 0}, "weight of task 'vqa' must be a positive number, got 0"),
    ({"pretrain": -1.0, "vqa": 1.0}, "weight of task 'pretrain' must be a positive number"),
    ({"pretrain": float("nan"), "vqa": 1.0}, "weight of task 'pretrain' must be a positive number"),
    ({"pretrain": "0.5", "vqa": 1.0}, "weight of task 'pretrain' must be a positive number"),
])
def test_bad_weights_are_refused_with_the_task_named(weights, message):
    with pytest.raises(ValueError, match=message):
        mixer(weights=weights)


def test_bad_loaders_and_lengths_are_refused():
    plain = DataLoader(TensorDataset(torch.arange(8)), batch_size=4)
    with pytest.raises(TypeError, match="task 'vqa'.*ResumableRandomSampler"):
        TaskMixer({"pretrain": task_loader("pretrain"), "vqa": plain}, WEIGHTS)
    with pytest.raises(ValueError, match="task 'vqa'.*no batches"):
        TaskMixer({"pretrain": task_loader("pretrain"), "vqa": task_loader("vqa", batch_size=64)}, WEIGHTS)
    with pytest.raises(ValueError, match="steps_per_epoch must be positive"):
        mixer(steps_per_epoch=0)
    with pytest.raises(ValueError, match="no tasks"):
        TaskMixer({}, {})
    with pytest.raises(ValueError, match="no step 20 of epoch 0"):
        mixer().load_state_dict({"epoch": 0, "steps_done": 20})
