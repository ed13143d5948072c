"""Joint multitask training: which tasks give their next batch at each step.

Either every task, at every step (``mixing="all"``), or one task per step drawn by weight
(``mixing="sample"``). Why the draws are written this way:

- Rank-consistent. The task of step ``k`` of epoch ``e`` comes from a generator seeded by
  ``(seed, e)`` alone, never by the rank. Every data-parallel rank therefore draws the same task
  at every step without communicating, and runs the same head, so no rank waits in a collective
  for a head that another rank did not run. Each task's loader is sharded by its own
  ``ResumableRandomSampler``, so the batches differ between ranks while the tasks agree.
- Deterministic. The generator's seed is a SHA-256 digest of the string ``"{seed}/{epoch}"``,
  not Python's ``hash()`` (salted per process by ``PYTHONHASHSEED``), so the schedule is the same
  in every process and every run. Task names are sorted first, so the order of the weights in a
  config does not matter.
- Resumable from its position alone. The state is ``(epoch, steps done in it)``. From it the
  draws of all earlier steps are replayed to count the batches each task has consumed, and each
  task's sampler is set to that epoch and offset (``set_epoch`` and ``resume``). A resumed mixer
  yields the same tasks and the same batches as an uninterrupted one.

Each task's loader is read as an endless stream: when it runs out, its sampler's next epoch
starts, independently of the other tasks and of the mixer's own epochs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from mammut.data.sampling import ResumableRandomSampler

log = logging.getLogger(__name__)


def task_schedule(weights: Mapping[str, float], seed: int, epoch: int, steps: int) -> list[str]:
    """The task of each of the first ``steps`` steps of ``epoch``: independent draws with
    probabilities proportional to ``weights``."""
    tasks = sorted(weights)
    _check_weights(weights, tasks)
    return [tasks[i] for i in _draw_tasks(weights, seed, epoch, steps).tolist()]


def _check_weights(weights: Mapping[str, float], tasks: list[str]) -> None:
    if not tasks:
        raise ValueError("no tasks to mix")
    if unknown := sorted(set(weights) - set(tasks)):
        raise ValueError(f"mixing weights name unknown task(s) {unknown}; the tasks are {sorted(tasks)}")
    if missing := sorted(set(tasks) - set(weights)):
        raise ValueError(f"task(s) {missing} have no mixing weight; give each task a positive weight")
    for task in tasks:
        weight = weights[task]
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"the mixing weight of task {task!r} must be a positive number, got {weight!r}")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The draws of one epoch: seeded by (seed, epoch) alone, the same on every rank and in every process."""
    digest = hashlib.sha256(f"{seed}/{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _draw_tasks(weights: Mapping[str, float], seed: int, epoch: int, steps: int) -> torch.Tensor:
    """(steps,) indices into the sorted task names."""
    probabilities = torch.tensor([float(weights[task]) for task in sorted(weights)], dtype=torch.float64)
    if steps == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.multinomial(probabilities, steps, replacement=True, generator=epoch_generator(seed, epoch))


class LoaderStream:
    """One DataLoader (a task's, or a source's: ``kind``) read as an endless stream of batches, its
    epochs one after another. It is positioned (an epoch, the batches done in it) through its
    sampler, a ``ResumableRandomSampler``, or, for a stream of tar shards, through its dataset's
    own ``set_epoch`` and ``resume`` (``mammut.data.shard_dataset.ShardCaptionDataset``)."""

    def __init__(self, name: str, loader: DataLoader, kind: str = "task"):
        self.name = f"{kind} {name!r}"
        if not isinstance(loader, DataLoader) or not (isinstance(loader.sampler, ResumableRandomSampler)
                                                      or _positions_itself(loader.dataset)):
            raise TypeError(f"{self.name}: the mixer positions each {kind}'s DataLoader through its sampler, "
                            f"which must be a ResumableRandomSampler, or through a dataset with set_epoch and "
                            f"resume; got {type(loader).__name__} with "
                            f"{type(getattr(loader, 'sampler', None)).__name__}")
        if len(loader) == 0:
            raise ValueError(f"{self.name}: its training loader has no batches")
        self.loader = loader
        self.batches_per_epoch = len(loader)
        self.batches_read = 0  # since the first batch of its sampler's epoch 0
        self.same_layout = True  # False: resumed with other ranks or workers than the run saved
        self._batches: Iterator | None = None

    def seek(self, batches_read: int, same_layout: bool = True) -> None:
        self.batches_read, self.same_layout, self._batches = batches_read, same_layout, None

    def next_batch(self) -> Any:
        epoch, batches_done = divmod(self.batches_read, self.batches_per_epoch)
        if self._batches is None or batches_done == 0:
            self._batches = self._start(epoch, batches_done)
        try:
            batch = next(self._batches)
        except StopIteration:
            raise RuntimeError(f"{self.name}: its loader ended after {batches_done} batches of epoch {epoch} "
                               f"but reports {self.batches_per_epoch}") from None
        self.batches_read += 1
        return batch

    def _start(self, epoch: int, batches_done: int) -> Iterator:
        sampler = self.loader.sampler
        if isinstance(sampler, ResumableRandomSampler):
            sampler.set_epoch(epoch)
            # resume() counts samples of the whole permutation, all ranks together; 0 also clears an older offset.
            sampler.resume(epoch, batches_done * self.loader.batch_size * sampler.num_replicas)
        else:  # a stream of shards: its batches per rank; 0 also clears an older offset
            self.loader.dataset.set_epoch(epoch)
            self.loader.dataset.resume(epoch, batches_done, same_layout=self.same_layout or batches_done == 0)
        return iter(self.loader)


def _positions_itself(dataset) -> bool:
    return callable(getattr(dataset, "set_epoch", None)) and callable(getattr(dataset, "resume", None))


MIXING_MODES = ("sample", "all")


class TaskMixer:
    """Yields ``{task: batch}`` at each step; ``len()`` steps per epoch.

    Two ways to mix (``mixing``):

    - ``"sample"``: one task per step, drawn by weight.
    - ``"all"``: a batch of every task at every step, their losses summed (weighted by the
      module's ``task_weights``), as Flamingo accumulates its datasets' gradients at each step
      (Alayrac et al. 2022, Sec. 2.4; its ablation in Sec. 3.3 found this better than taking the
      datasets round-robin). Every update of the shared weights carries every task's gradient,
      so AdamW's moments are not averaged over steps that each saw another objective.

    Args:
        loaders: each task's training DataLoader, sharded for this rank by a ``ResumableRandomSampler``.
        weights: each task's mixing weight (positive, need not sum to 1); ``"sample"`` only.
        seed: seeds the task draws; the same on every rank.
        steps_per_epoch: steps in one epoch of the mixer; by default the sum of the loaders' lengths
            (``"sample"``) or the longest loader's length (``"all"``).
        mixing: ``"sample"`` or ``"all"``, as above.

    Each pass over the mixer (``for batches in mixer``) continues from its position: a pass that
    ended its epoch is followed by the next epoch, a pass abandoned mid-epoch is continued.
    ``set_epoch(e)`` jumps to the start of epoch ``e`` as if all earlier epochs had run.
    Only one pass may be under way at a time.
    """

    def __init__(self, loaders: Mapping[str, DataLoader], weights: Mapping[str, float] | None = None,
                 seed: int = 0, steps_per_epoch: int | None = None, mixing: str = "sample"):
        if mixing not in MIXING_MODES:
            raise ValueError(f"mixing must be one of {MIXING_MODES}, got {mixing!r}")
        self.tasks, self.mixing = sorted(loaders), mixing
        if mixing == "sample":
            _check_weights(weights or {}, self.tasks)
            self.weights = {task: float(weights[task]) for task in self.tasks}
        elif weights:
            raise ValueError("with mixing 'all' every task trains at every step, so there is nothing to draw "
                             "by weight; weigh the tasks' losses with the module's task_weights instead")
        else:
            self.weights = {}
        self.seed = seed
        self._streams = {task: LoaderStream(task, loaders[task]) for task in self.tasks}
        if steps_per_epoch is None:
            lengths = [stream.batches_per_epoch for stream in self._streams.values()]
            steps_per_epoch = sum(lengths) if mixing == "sample" else max(lengths)
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.epoch, self.steps_done = 0, 0
        self._schedule: tuple[int, list[int]] | None = None  # (epoch, its task indices), drawn once per epoch
        self._steps_per_task = dict.fromkeys(self.tasks, 0)

    def __len__(self) -> int:
        return self.steps_per_epoch

    # A generator, so that iter() alone (Lightning calls it to check that a loader is iterable) changes nothing.
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.steps_done >= self.steps_per_epoch:
            self.set_epoch(self.epoch + 1)
        while self.steps_done < self.steps_per_epoch:
            tasks = self.tasks if self.mixing == "all" else [self.tasks[self._epoch_schedule()[self.steps_done]]]
            batches = {task: self._streams[task].next_batch() for task in tasks}
            self.steps_done += 1
            for task in tasks:
                self._steps_per_task[task] += 1
            yield batches

    @property
    def steps_per_task(self) -> dict[str, int]:
        """Steps each task has had since the start of epoch 0, for logging."""
        return dict(self._steps_per_task)

    def set_epoch(self, epoch: int) -> None:
        """Moves to the start of ``epoch``, unless the mixer is already in it (a resumed position is kept)."""
        if epoch == self.epoch + 1 and self.steps_done == self.steps_per_epoch:
            self.epoch, self.steps_done = epoch, 0  # the task streams are already where this epoch starts
        elif epoch != self.epoch:
            self._seek(epoch, 0)

    def state_dict(self) -> dict[str, Any]:
        # Only (epoch, steps_done) position the mixer; the rest is there to notice a changed setup.
        return {"epoch": self.epoch, "steps_done": self.steps_done, "seed": self.seed, "mixing": self.mixing,
                "weights": dict(self.weights), "steps_per_epoch": self.steps_per_epoch,
                "batches_per_epoch": self._batches_per_epoch()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = {key: state[key] for key in ("seed", "mixing", "weights", "steps_per_epoch", "batches_per_epoch")
                 if key in state}
        current = {key: value for key, value in self.state_dict().items() if key in saved}
        if saved != current:
            log.warning("resuming the task mixer with a different setup (saved %s, now %s): the tasks and batches "
                        "from here on are not those the interrupted run would have drawn", saved, current)
        self._seek(state["epoch"], state["steps_done"])

    def _batches_per_epoch(self) -> dict[str, int]:
        return {task: stream.batches_per_epoch for task, stream in self._streams.items()}

    def _epoch_schedule(self) -> list[int]:
        if self._schedule is None or self._schedule[0] != self.epoch:
            draws = _draw_tasks(self.weights, self.seed, self.epoch, self.steps_per_epoch)
            self._schedule = (self.epoch, draws.tolist())
        return self._schedule[1]

    def _seek(self, epoch: int, steps_done: int) -> None:
        """Replays the draws before (epoch, steps_done) to place every task's stream where that run left it."""
        if epoch < 0 or not 0 <= steps_done <= self.steps_per_epoch:
            raise ValueError(f"no step {steps_done} of epoch {epoch} in a mixer of {self.steps_per_epoch} "
                             "steps per epoch")
        counts = torch.zeros(len(self.tasks), dtype=torch.long)
        if self.mixing == "all":  # every task had every step
            counts += epoch * self.steps_per_epoch + steps_done
        else:
            for past_epoch in range(epoch + 1):
                draws = _draw_tasks(self.weights, self.seed, past_epoch, self.steps_per_epoch)
                counts += torch.bincount(draws if past_epoch < epoch else draws[:steps_done],
                                         minlength=len(self.tasks))
        self._steps_per_task = dict(zip(self.tasks, counts.tolist()))
        for task, stream in self._streams.items():
            stream.seek(self._steps_per_task[task])
        self.epoch, self.steps_done = epoch, steps_done
