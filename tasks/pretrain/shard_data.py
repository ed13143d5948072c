"""Image-caption pretraining from WebDataset tar shards as img2dataset writes them (LAION,
DataComp, CC3M/CC12M), with validation and test on COCO-format caption files.

    mammut fit --config configs/pretrain_shards.yaml
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from torch.utils.data import DataLoader

from mammut.data import image_transform
from mammut.data.errors import BadSampleError, DataFormatError
from mammut.data.shard_dataset import ShardCaptionDataset
from mammut.data.shard_files import (expand_shard_patterns, is_local, missing_local_shards, parquet_captions,
                                     stats_sample_count)
from mammut.data.shard_reader import read_shard
from mammut.data.shard_streams import ShardSource
from mammut.data.source_mixing import SourceMixer
from mammut.data.sources import check_source_name
from mammut.learning_progress import MIXINGS
from mammut.tasks.datamodule import SPLITS_READ
from mammut.tasks.pretrain.data import ImageTextDataModule
from mammut.tasks.pretrain.task import CaptionInputs

log = logging.getLogger(__name__)

# Lightning warns that an iterable dataset's length may be wrong with several workers; each worker
# of ShardCaptionDataset makes exactly its share of the epoch, so the length is exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class ShardTextDataModule(ImageTextDataModule):
    """Training pairs streamed from tar shards; ``val_*`` and ``test_*`` as ``ImageTextDataModule``
    reads them (``train_annotations`` and ``train_images`` are not read)."""

    def __init__(
        self,
        train_shards: str = "shards/train/{00000..00019}.tar",
        train_num_samples: int = 20_000,
        source_weights: list[float] | None = None,
        source_names: list[str] | None = None,
        mixing: str = "fixed",
        resampled: bool = False,
        caption_field: str | None = None,
        shuffle_buffer: int = 1000,
        baseline_captions: int = 100_000,
        **kwargs,
    ):
        """
        Args:
            train_shards: the training tars: a brace pattern, a glob, several joined by ``::``, or
                ``pipe:`` commands (``pipe:aws s3 cp s3://bucket/{00000..00999}.tar -``). Local
                paths are relative to ``root``.
            train_num_samples: samples in an epoch, all ranks together (img2dataset writes no total).
                Every rank runs ``train_num_samples // (batch_size × ranks)`` steps per epoch.
            source_weights: one weight per ``::``-separated pattern, each then a source of its own,
                mixed sample by sample in proportion (open_clip's upsampling factors); None: the
                patterns are one list.
            source_names: one name per source (default ``source0``, ``source1``, ...); the logged
                weights and losses of ``mixing: adaptive`` are keyed by them.
            mixing: ``fixed`` mixes the sources sample by sample by ``source_weights``;
                ``adaptive`` draws each batch's source, the weights starting at ``source_weights``
                and moved by the rule of ``data.adaptive`` (``mammut.data.source_mixing``, as for
                COCO-format ``train_sources``; docs/adaptive-mixing.md).
            resampled: draw shards with replacement, each rank and worker from its own random
                source; else every shard is read once per epoch, split among ranks and workers.
            caption_field: None for ``<key>.txt``; else the field of ``<key>.json`` that holds the
                caption (a list-valued field gives one of its captions, drawn per epoch).
            shuffle_buffer: samples each worker holds to shuffle across its open shards.
            baseline_captions: training captions read (from the shards' parquet files) for the
                captioning baseline, the most frequent one.
            **kwargs: those of ``ImageTextDataModule`` (val/test files, batch_size, root, ...).
        """
        if kwargs.get("train_sources"):
            raise ValueError("shard sources are the '::'-separated patterns of data.train_shards, weighed by "
                             "data.source_weights; data.train_sources is for COCO-format sources "
                             "(docs/adaptive-mixing.md)")
        super().__init__(**kwargs)  # its mixing is of train_sources: this module's is its own
        self.save_arguments(locals())
        if mixing not in MIXINGS:
            raise ValueError(f"data.mixing must be one of {MIXINGS}, got {mixing!r}")
        if mixing == "adaptive" and source_weights is None:
            raise ValueError("data.mixing=adaptive weighs the '::'-separated patterns of data.train_shards as "
                             "sources: give each its starting weight in data.source_weights")
        self.check_adaptive_target(mixing)
        if source_names is not None:
            if source_weights is None:
                raise ValueError("data.source_names names the sources of data.source_weights; without weights the "
                                 "'::'-separated patterns of data.train_shards are one source")
            if len(source_names) != len(train_shards.split("::")):
                raise ValueError(f"data.source_names has {len(source_names)} names for "
                                 f"{len(train_shards.split('::'))} '::'-separated patterns of data.train_shards")
            for name in source_names:
                check_source_name(name, "data.source_names")
            if len(set(source_names)) != len(source_names):
                raise ValueError(f"data.source_names must differ from each other, got {source_names}")
        if train_num_samples <= 0:
            raise ValueError(f"data.train_num_samples must be positive, got {train_num_samples}")
        if source_weights is not None and any(w <= 0 for w in source_weights):
            raise ValueError(f"data.source_weights must be positive, got {source_weights}")
        if source_weights is not None and len(source_weights) != len(train_shards.split("::")):
            raise ValueError(f"data.source_weights has {len(source_weights)} weights for "
                             f"{len(train_shards.split('::'))} '::'-separated patterns of data.train_shards")
        self.resume_layout: tuple[int, int] | None = None  # (ranks, workers) of the run that saved resume_point

    # ---------------------------------------------------------------- sources
    def shard_groups(self) -> list[list[str]]:
        """The shards of each ``::``-separated pattern, local paths resolved against ``root``."""
        patterns = "::".join(part if not is_local(part.strip()) or Path(part.strip()).is_absolute()
                             else str(self.root / part.strip()) for part in self.hparams.train_shards.split("::"))
        return expand_shard_patterns(patterns)

    def sources(self) -> list[ShardSource]:
        groups, weights, names = self.shard_groups(), self.hparams.source_weights, self.hparams.source_names
        if weights is None:
            groups, weights = [[shard for group in groups for shard in group]], [1.0]
        sources = []
        for index, (shards, weight) in enumerate(zip(groups, weights)):
            name = names[index] if names else f"source{index}"
            missing = missing_local_shards(shards)
            if missing:
                log.warning("source %s: %d of its %d shards are missing (%s%s); each is a skipped sample when read",
                            name, len(missing), len(shards), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "")
            sources.append(ShardSource(name, tuple(shards), float(weight),
                                       tuple(stats_sample_count(shard) for shard in shards)))
        return sources

    # ----------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        for split in SPLITS_READ[stage]:
            if split != "train":  # the training split is streamed, never read whole
                self.read_records(split)
        self.read_zero_shot_sets(stage)

    def task_inputs(self, task: str) -> CaptionInputs:
        """The captioning baseline's training captions: from the shards' parquet files, else from the
        first shards themselves."""
        shards = [shard for group in self.shard_groups() for shard in group]
        limit, field = self.hparams.baseline_captions, self.hparams.caption_field
        captions = parquet_captions(shards, field or "caption", limit)
        if not captions:
            dataset = self.train_dataset(rank=0, world_size=1)
            for shard in shards[:10]:
                for entry in read_shard(shard):
                    try:
                        captions.append(dataset.caption(entry))
                    except BadSampleError:  # no caption to count; training skips or names it later
                        pass
                if len(captions) >= limit:
                    break
        if not captions:
            raise DataFormatError(f"no caption found in the first shards of {self.hparams.train_shards}")
        return CaptionInputs(self.input_shape, captions, zero_shot=self.zero_shot_inputs())

    # ------------------------------------------------------------------ loading
    def batches_per_rank(self, world_size: int) -> int:
        """Each rank's batches in an epoch of ``train_num_samples``."""
        h = self.hparams
        batches = h.train_num_samples // (h.batch_size * world_size)
        if batches == 0:
            raise ValueError(f"data.train_num_samples={h.train_num_samples} is less than one batch of "
                             f"{h.batch_size} on each of {world_size} device(s)")
        return batches

    def train_dataset(self, rank: int, world_size: int) -> ShardCaptionDataset:
        return self.stream(self.sources(), self.batches_per_rank(world_size), rank, world_size)

    def stream(self, sources: list[ShardSource], batches: int, rank: int, world_size: int) -> ShardCaptionDataset:
        """This rank's stream of training batches from ``sources``, ``batches`` of them per epoch."""
        h = self.hparams
        return ShardCaptionDataset(sources, self.tokenizer, image_transform(self.image_size, train=True),
                                   self.context_length, h.batch_size, batches, h.caption_field, h.resampled,
                                   h.shuffle_buffer, h.seed, rank, world_size, h.skip_bad_samples)

    def train_dataloader(self) -> DataLoader | SourceMixer:
        h = self.hparams
        rank, world_size = self.data_parallel_rank()
        if h.mixing == "adaptive":
            return self.adaptive_mixer(rank, world_size)
        dataset = self.train_dataset(rank, world_size)
        epoch, samples_done = self.resume_point
        dataset.set_epoch(epoch)
        layout = (world_size, max(h.num_workers, 1))
        saved = self.resume_layout or layout
        batches_done = samples_done // (h.batch_size * saved[0])
        if batches_done >= self.batches_per_rank(saved[0]):
            dataset.set_epoch(epoch + 1)  # saved at the end of its epoch: Lightning goes on with the next
        elif batches_done:
            dataset.resume(epoch, batches_done, same_layout=saved == layout)
            log.info("resuming epoch %d after %d batches per rank%s", epoch, batches_done,
                     "" if saved == layout else f"; saved with {saved[0]} ranks × {saved[1]} workers, now "
                     f"{layout[0]} × {layout[1]}: the rest of the epoch is drawn afresh")
        loader = self.shard_loader(dataset)
        # Lightning tells the epoch to a loader's sampler; an iterable dataset's loader has only a
        # placeholder sampler, which passes it on to the dataset.
        loader.sampler.set_epoch = dataset.set_epoch
        return loader

    def adaptive_mixer(self, rank: int, world_size: int) -> SourceMixer:
        """A loader per source, each an endless stream of its own shards, and the mixer that draws
        each batch's source. A source's epoch (when its stream starts again) is its samples by the
        stats files, or else its weight's share of ``train_num_samples``; the mixer's epoch is
        ``train_num_samples``."""
        h, sources = self.hparams, self.sources()
        total_weight = sum(source.weight for source in sources)
        loaders = {}
        for source in sources:
            counts = source.sample_counts
            samples = sum(counts) if counts and None not in counts else h.train_num_samples * source.weight / total_weight
            dataset = self.stream([source], max(1, int(samples) // (h.batch_size * world_size)), rank, world_size)
            loaders[source.name] = self.shard_loader(dataset)
        return self.source_mixer(loaders, {source.name: source.weight for source in sources}, adaptive=True,
                                 steps_per_epoch=self.batches_per_rank(world_size),
                                 layout=(world_size, max(h.num_workers, 1)))

    def shard_loader(self, dataset: ShardCaptionDataset) -> DataLoader:
        """Batches of a shard stream; the stream itself splits the shards among ranks and workers."""
        return DataLoader(dataset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
                          collate_fn=self.collate_train)

    # Mid-epoch resume: the position as TaskDataModule records it, with the layout it was saved in.
    # With adaptive mixing Lightning saves the mixer's position with the loader itself.
    def state_dict(self) -> dict:
        if self.hparams.mixing == "adaptive":
            return {}
        state = super().state_dict()
        if state:
            _, ranks = self.data_parallel_rank()
            state["layout"] = [ranks, max(self.hparams.num_workers, 1)]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.resume_layout = tuple(state["layout"]) if "layout" in state else None
