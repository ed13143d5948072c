"""The data of a joint run: each task's own data module, mixed step by step by weight.

    mammut fit --config configs/multitask.yaml

Training draws one task per step by weight, or takes a batch of every task at every step
(``mixing``; ``mammut.data.task_mixing.TaskMixer``): the same tasks on every rank, from the
seed alone, and exactly again after a mid-epoch resume (Lightning saves the mixer's position
in the checkpoint). Validation and test run every task's loader in turn;
``task_names`` tells the module which task each loader belongs to.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from mammut.data.task_mixing import MIXING_MODES, TaskMixer
from mammut.tasks.datamodule import SizesTheModel, TaskDataModule


class JointDataModule(SizesTheModel, L.LightningDataModule):
    """Several tasks' data modules behind one, for a ``MammutModule`` with the same task names."""

    def __init__(self, tasks: dict[str, TaskDataModule], weights: dict[str, float] | None = None,
                 steps_per_epoch: int | None = None, seed: int = 0, mixing: str = "sample"):
        """
        Args:
            tasks: task name -> that task's data module (``ImageTextDataModule``, ``VQADataModule``, ...).
                The names must be the model's task names.
            weights: task name -> how often training draws it, relative to the others (default 1
                each); ``mixing: sample`` only.
            steps_per_epoch: training steps per epoch; by default the tasks' batches per epoch
                together (``sample``) or the longest task's (``all``).
            seed: of the task draws (each task's own data module shuffles with its own seed).
            mixing: ``sample`` draws one task per step by ``weights``; ``all`` trains every task at
                every step, their losses weighted by the model's ``task_weights``
                (``mammut.data.task_mixing.TaskMixer``).
        """
        super().__init__()
        if not tasks:
            raise ValueError("a joint data module needs at least one task")
        self.tasks = dict(tasks)
        if mixing not in MIXING_MODES:
            raise ValueError(f"mixing must be one of {MIXING_MODES}, got {mixing!r}")
        if mixing == "all" and weights:
            raise ValueError("data.weights draw one task per step; with mixing 'all' every task trains at every "
                             "step: weigh the tasks' losses with model.task_weights instead")
        self.mixing = mixing
        self.weights = {name: (weights or {}).get(name, 1.0) for name in self.tasks} if mixing == "sample" else None
        unknown = set(weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"weights name {sorted(unknown)}, which are not among the tasks {list(self.tasks)}")
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.mixer: TaskMixer | None = None
        first = next(iter(self.tasks.values()))
        for name, data in self.tasks.items():
            if data.tokenizer.special_token_ids != first.tokenizer.special_token_ids or \
                    data.vocab_size != first.vocab_size:
                raise ValueError(f"task {name!r} has another tokenizer than {next(iter(self.tasks))!r}: "
                                 "one model needs one tokenizer")

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def tokenizer(self):
        """The tasks' one tokenizer, which sizes the model."""
        return next(iter(self.tasks.values())).tokenizer

    @property
    def records_skipped(self) -> dict[str, int]:
        """Per split, every task's records dropped at read time, together."""
        total: dict[str, int] = {}
        for data in self.tasks.values():
            for split, count in data.records_skipped.items():
                total[split] = total.get(split, 0) + count
        return total

    def connect(self, **model_settings: int) -> None:
        for data in self.tasks.values():
            data.connect(**model_settings)

    def task_inputs(self, task: str):
        return self.tasks[task].task_inputs(task)

    def _attach(self) -> None:
        # Each task's data module shards its loader by the trainer's ranks and reads its state.
        for data in self.tasks.values():
            data.trainer = self.trainer

    def setup(self, stage: str) -> None:
        self._attach()
        for data in self.tasks.values():
            data.setup(stage)

    def train_dataloader(self) -> TaskMixer:
        previous = self.mixer
        self.mixer = TaskMixer({name: data.train_dataloader() for name, data in self.tasks.items()},
                               self.weights, seed=self.seed, steps_per_epoch=self.steps_per_epoch,
                               mixing=self.mixing)
        if previous is not None:  # reloaded dataloaders continue where the last ones were
            self.mixer.load_state_dict(previous.state_dict())
        return self.mixer

    def eval_loader_tasks(self, split: str) -> list[str]:
        """The task of each evaluation loader: a task's data module may run several (pretraining's
        zero-shot classification sets)."""
        return [name for name, data in self.tasks.items() for _ in range(data.num_eval_loaders(split))]

    def val_dataloader(self) -> list[DataLoader]:
        return [loader for data in self.tasks.values() for loader in _as_list(data.val_dataloader())]

    def test_dataloader(self) -> list[DataLoader]:
        return [loader for data in self.tasks.values() for loader in _as_list(data.test_dataloader())]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Each task's batch as its own data module finishes it on the device (a video module
        normalises its clips there): in training ``{task: batch}``, in evaluation loader i is task i's."""
        if isinstance(batch, dict):
            return {name: self.tasks[name].on_after_batch_transfer(task_batch, dataloader_idx)
                    for name, task_batch in batch.items()}
        stage = "test" if self.trainer is not None and self.trainer.testing else "val"
        task = self.eval_loader_tasks(stage)[dataloader_idx]
        return self.tasks[task].on_after_batch_transfer(batch, dataloader_idx)

    # The mixer's position is saved by Lightning with the loader itself; the task data modules'
    # own mid-epoch bookkeeping means nothing here (the mixer positions their samplers).
    def state_dict(self) -> dict:
        return {}


def _as_list(loaders) -> list:
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
