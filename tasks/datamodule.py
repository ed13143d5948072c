"""What every task's LightningDataModule shares.

- Paths resolved against one data root, and the tokenizer the model is sized for
  (``vocab_size`` and ``special_token_ids`` are linked to the model by the CLI).
- Settings flow one way: the module hands the data side its image size and context length
  once (``connect``); the data side never reads the model. ``setup`` reads the annotation
  files; the datasets, which need those settings, are built when their loader is asked for.
- ``task_inputs(task)``: what a task's baselines and predictions need from the data (the
  training captions, the majority answers), as the typed ``TaskInputs`` the task declares;
  the module hands it to the task once, at set-up.
- A training loader sharded over data-parallel ranks that resumes mid-epoch: the
  checkpoint records how many samples of the epoch were done, and the sampler skips them.
  A training set too small for one batch per rank is an error, not an empty epoch.
- ``records_skipped``: per split, the records the readers dropped as bad (read by the module
  once, at set-up, after this module's ``setup`` has read the files).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mammut.data import CaptionTokenizer, image_transform
from mammut.data.sampling import ResumableRandomSampler
from mammut.task import TaskInputs

log = logging.getLogger(__name__)


class SizesTheModel:
    """A data module's tokenizer sizes the model: the CLI links these to ``model.architecture``."""

    tokenizer: CaptionTokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_token_ids(self) -> dict[str, int]:
        return self.tokenizer.special_token_ids


# The splits each stage reads: the training split too when evaluating, for the baselines.
SPLITS_READ = {"fit": ["train", "val"], "validate": ["train", "val"], "test": ["train", "test"], "predict": []}


class TaskDataModule(SizesTheModel, L.LightningDataModule):
    """Subclasses take their own arguments, with at least ``batch_size`` and ``eval_batch_size``,
    pass the shared ones on as ``**kwargs`` and then call ``save_arguments(locals())``;
    they implement ``read_split`` and name their dataset class and collate functions."""

    # Built as dataset_class(records, tokenizer, transform, context_length, train=, seed=, skip_bad_samples=).
    dataset_class: type[Dataset]
    collate_train: Callable  # a staticmethod: training batches
    collate_eval: Callable  # a staticmethod: evaluation batches

    def __init__(
        self,
        root: str = "data/demo",
        tokenizer: str = "tokenizer.json",
        image_size: int | None = None,
        context_length: int | None = None,
        num_workers: int = 2,
        skip_bad_samples: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            root: folder that the data module's relative paths are resolved against.
            tokenizer: a tokenizer.json: the one the model was pretrained with, or one trained
                by ``python -m mammut.data.tokenizer``.
            image_size: side of the square model input (each frame's, for a clip); by default
                the model's ``architecture.image_size``.
            context_length: tokens per text, bos and eos included; by default the model's.
            num_workers: DataLoader worker processes (image and video decoding run there).
            skip_bad_samples: skip (and count) unreadable images and videos, and records that
                cannot be trained on (an empty caption, a question without answers), instead of failing.
            seed: shuffling and per-sample draws (a caption, an answer, a clip's frames); a
                resumed run repeats them exactly.
        """
        super().__init__()
        self.root = Path(root)
        self.tokenizer = CaptionTokenizer.from_file(self.path(tokenizer))
        self.image_size, self.context_length = image_size, context_length
        self.resume_point = (0, 0)  # (epoch, samples done in it by all ranks), restored from a checkpoint
        self.records: dict[str, list] = {}  # per split, what the readers read from the annotation files
        self.datasets: dict[str, Dataset] = {}
        # Records dropped (with skip_bad_samples) when each split's files were read; the module
        # adds a split's to its count of skipped samples once that split's loop runs.
        self.records_skipped: dict[str, int] = {}
        self.save_arguments(locals())

    def save_arguments(self, arguments: dict) -> None:
        """Add one ``__init__``'s arguments, its ``locals()``, to the saved hyperparameters, so that
        they hold exactly this data module's arguments. (``save_hyperparameters()`` alone would take
        what LightningCLI hands it, which for a data module built inside another one, as the tasks
        of a ``JointDataModule``, is the outer module's configuration.)"""
        own = {k: v for k, v in arguments.items() if k not in ("self", "__class__", "kwargs")}
        self.save_hyperparameters({**self.hparams, **own})

    def path(self, relative: str) -> Path:
        return self.root / relative

    # The model's settings that the data needs, given by ``connect`` unless set here.
    model_settings = ("image_size", "context_length")

    def connect(self, **model_settings: int) -> None:
        """Take the model's settings this data module needs (``model_settings``: image size and
        context length, and a video module's frames per clip), unless set here; a value set here
        that differs from the model's is an error. Settings it does not need are ignored."""
        for name in self.model_settings:
            model_value = model_settings.get(name)
            if model_value is None:
                continue
            if getattr(self, name) is None:
                setattr(self, name, model_value)
            elif getattr(self, name) != model_value:
                raise ValueError(f"data.{name}={getattr(self, name)} but the model's architecture.{name}={model_value}")

    def dataset(self, split: str) -> Dataset:
        """The dataset of a split, built on first use from the records ``setup`` read."""
        if split not in self.datasets:
            missing = [name for name in self.model_settings if getattr(self, name) is None]
            if missing:
                raise ValueError(f"data.{' and data.'.join(missing)} not set: set them, or connect the data module to "
                                 "the model (MammutModule does this in its setup)")
            self.datasets[split] = self.build_dataset(split)
        return self.datasets[split]

    def setup(self, stage: str) -> None:
        for split in SPLITS_READ[stage]:
            self.read_records(split)

    def build_dataset(self, split: str) -> Dataset:
        return self.dataset_of(self.read_records(split), train=split == "train")

    def dataset_of(self, records: list, train: bool) -> Dataset:
        """A dataset of these records, with this data module's tokenizer, transform and settings."""
        h = self.hparams
        return self.dataset_class(records, self.tokenizer, image_transform(self.image_size, train=train),
                                  self.context_length, train=train, seed=h.seed, skip_bad_samples=h.skip_bad_samples,
                                  **self.dataset_arguments())

    def dataset_arguments(self) -> dict:
        """Arguments of ``dataset_class`` of this kind of data only (e.g. a question's answer room)."""
        return {}

    def read_records(self, split: str) -> list:
        """The records of a split, read once; what the reader dropped is counted and logged."""
        if split not in self.records:
            records, skipped, source = self.read_split(split)
            self.records_skipped[split] = skipped
            if skipped:
                log.warning("%s: skipped %d bad records", source, skipped)
            if not records:
                raise ValueError(f"{source}: no usable records in the {split} split")
            self.records[split] = records
        return self.records[split]

    def read_split(self, split: str) -> tuple[list, int, Path]:
        """A split's records, how many the reader dropped, and the file they came from."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's model input: (3, H, W) images."""
        return (3, self.image_size, self.image_size)

    def task_inputs(self, task: str) -> TaskInputs:
        """What task ``task`` needs from the data (its ``Task.inputs_type``), given once at set-up."""
        return TaskInputs(input_shape=self.input_shape)

    def num_eval_loaders(self, split: str) -> int:
        """How many loaders ``val_dataloader`` / ``test_dataloader`` return for ``split``."""
        return 1

    def data_parallel_rank(self) -> tuple[int, int]:
        """(rank, ranks) among the data-parallel replicas, each of which trains on its own shard of the data."""
        shard = (self.trainer.distributed_sampler_kwargs if self.trainer else None) or {}
        return shard.get("rank", 0), shard.get("num_replicas", 1)

    def train_loader(self, dataset: Dataset, collate_fn: Callable) -> DataLoader:
        batch_size = self.hparams.batch_size
        # Each data-parallel rank draws its own shard of every epoch's permutation.
        rank, ranks = self.data_parallel_rank()
        sampler = ResumableRandomSampler(len(dataset), self.hparams.seed, num_replicas=ranks, rank=rank,
                                         on_epoch=getattr(dataset, "set_epoch", None))
        # With drop_last, a shard smaller than one batch would train nothing and still "succeed".
        if len(dataset) == 0:
            raise ValueError("the training set is empty: nothing to train on")
        if len(sampler) < batch_size:
            raise ValueError(
                f"data.batch_size={batch_size} per device × {sampler.num_replicas} device(s) exceeds the "
                f"{len(dataset)} training samples ({len(sampler)} per device): not one full batch to train on; "
                f"lower data.batch_size to at most {len(sampler)}")
        epoch, samples_done = self.resume_point
        if 0 < samples_done < len(sampler) // batch_size * batch_size * sampler.num_replicas:
            sampler.resume(epoch, samples_done)
            log.info("resuming epoch %d after %d samples", epoch, samples_done)
        # drop_last keeps every batch the same size (for a contrastive loss, the same negatives).
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.hparams.num_workers, collate_fn=collate_fn)

    def eval_loader(self, dataset: Dataset, collate_fn: Callable) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.dataset("train"), self.collate_train)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.dataset("val"), self.collate_eval)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.dataset("test"), self.collate_eval)

    # Mid-epoch resume: remember how many samples of this epoch the model has seen, all ranks together.
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        batches_done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        _, ranks = self.data_parallel_rank()
        return {"epoch": self.trainer.current_epoch, "samples_done": batches_done * self.hparams.batch_size * ranks}

    def load_state_dict(self, state: dict) -> None:
        self.resume_point = (state.get("epoch", 0), state.get("samples_done", 0))
