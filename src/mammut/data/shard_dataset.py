"""Image-caption training samples from tar shards in img2dataset's layout, an epoch at a time.

An epoch is ``batches_per_rank`` batches on every rank, whatever the shards hold (img2dataset
writes no total, so the epoch is set by the config): every rank runs the same number of steps and
none waits for another at the end. Worker ``w`` of a rank makes ``worker_batches(...)`` of them
from its own stream (``mammut.data.shard_streams``), in the order the DataLoader takes them.

Resuming: ``resume(epoch, batches_done)`` makes the next pass over that epoch skip, on each
worker, the stream entries its batches had used (read again but not decoded); with the same number
of ranks and workers the run then sees exactly the batches the interrupted run would have seen. A
skipped bad sample used its place in a batch, so skipping by entries stays exact.

Bad data: an undecodable or missing image, a missing or empty caption, and a shard that cannot be
opened, is truncated or is shorter than its stats file raise ``BadSampleError`` naming the shard
and key, or, with ``skip_bad_samples``, are logged and yield None in the sample's place (the
collate function drops and counts it, and the run logs ``data/skipped_samples``). A stream whose
last ``MAX_BAD_IN_A_ROW`` entries were all bad stops with an error: its data is unreadable.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from mammut.data.captions_dataset import TrainSample
from mammut.data.errors import BadSampleError
from mammut.data.images import decode_rgb_image
from mammut.data.shard_reader import Entry
from mammut.data.shard_streams import ShardSource, Stream, stream_entries, worker_batches, worker_batches_done
from mammut.data.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Far beyond any real data's run of bad samples, and soon reached by a source whose shards are all gone.
MAX_BAD_IN_A_ROW = 200


class ShardCaptionDataset(IterableDataset):
    """Training samples (``TrainSample``) from weighted sources of shards.

    Args:
        sources: the shard sets, each with its weight.
        batches_per_rank: the epoch, in batches of ``batch_size``, on every rank.
        caption_field: None to read ``<key>.txt``; else a field of ``<key>.json``, a string or a
            list of strings (one drawn per epoch from (seed, epoch, shard, key)).
        resampled: draw shards with replacement per stream, instead of reading each once per epoch.
        shuffle_buffer: samples a stream holds to shuffle (1: stored order).
        rank, world_size: this process's place among the data-parallel ranks.
    """

    def __init__(self, sources: list[ShardSource], tokenizer: CaptionTokenizer, transform: Callable[[Image.Image], Tensor],
                 context_length: int, batch_size: int, batches_per_rank: int, caption_field: str | None = None,
                 resampled: bool = False, shuffle_buffer: int = 1000, seed: int = 0, rank: int = 0,
                 world_size: int = 1, skip_bad_samples: bool = False):
        self.sources, self.tokenizer, self.transform = list(sources), tokenizer, transform
        self.context_length, self.batch_size, self.batches_per_rank = context_length, batch_size, batches_per_rank
        self.caption_field, self.resampled, self.shuffle_buffer = caption_field, resampled, shuffle_buffer
        self.seed, self.rank, self.world_size, self.skip_bad_samples = seed, rank, world_size, skip_bad_samples
        self.epoch = 0
        self._resume_epoch, self._resume_batches, self._same_layout = -1, 0, True

    def set_epoch(self, epoch: int) -> None:
        """Workers are started for each epoch's pass, after this, so they see it."""
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int, same_layout: bool = True) -> None:
        """Make the pass over ``epoch`` continue after its first ``batches_done`` batches on each
        rank. With another number of ranks or workers than the run that stopped (``same_layout``
        false), the epoch's remaining batches come from streams drawn afresh."""
        self._resume_epoch, self._resume_batches, self._same_layout = epoch, batches_done, same_layout

    def __len__(self) -> int:
        """Samples per rank and epoch, so that the DataLoader's length is the epoch's batches."""
        return self.batches_per_rank * self.batch_size

    def __iter__(self) -> Iterator[TrainSample | None]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = Stream(self.rank, self.world_size, worker, num_workers)
        batches, done, seed = self.batches_per_rank, 0, self.seed
        if self.epoch == self._resume_epoch and self._same_layout:
            done = worker_batches_done(self._resume_batches, num_workers, worker) * self.batch_size
        elif self.epoch == self._resume_epoch:
            batches, seed = max(0, batches - self._resume_batches), f"{self.seed}/resumed-after-{self._resume_batches}"
        quota = worker_batches(batches, num_workers, worker) * self.batch_size
        entries = stream_entries(self.sources, stream, seed, self.epoch, self.resampled, self.shuffle_buffer)
        bad_in_a_row = 0
        for entry in islice(entries, done, quota):
            sample = self.sample(entry)
            bad_in_a_row = bad_in_a_row + 1 if sample is None else 0
            if bad_in_a_row >= MAX_BAD_IN_A_ROW:
                raise BadSampleError(f"rank {self.rank} worker {worker}: the last {bad_in_a_row} samples were all bad, "
                                     f"the last one {entry.name}: {entry.problem or 'see the warnings above'}")
            yield sample

    def sample(self, entry: Entry) -> TrainSample | None:
        """A training sample of the entry; None (logged) if it is bad and bad samples are skipped."""
        try:
            if entry.problem:
                raise BadSampleError(f"{entry.name}: {entry.problem}")
            image = self.transform(decode_rgb_image(_image_bytes(entry), name=entry.name))
            caption = self.caption(entry)
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            log.warning("skipping bad sample: %s", error)  # the message names the shard and key
            return None
        tokens, lengths = self.tokenizer.encode_batch([caption], self.context_length, return_lengths=True)
        truncated = [f"{entry.name}: caption of {n} tokens cut to the context length {self.context_length}"
                     for n in lengths if n > self.context_length]
        return TrainSample(image=image, tokens=tokens[0], image_id=sample_id(entry.key), truncated=truncated)

    def caption(self, entry: Entry) -> str:
        if self.caption_field is None:
            if "txt" not in entry.files:
                raise BadSampleError(f"{entry.name}: no caption (no .txt file)")
            value = _text(entry, "txt")
        else:
            if "json" not in entry.files:
                raise BadSampleError(f"{entry.name}: no caption (no .json file with {self.caption_field!r})")
            try:
                value = json.loads(_text(entry, "json")).get(self.caption_field)
            except (ValueError, AttributeError) as error:
                raise BadSampleError(f"{entry.name}: unreadable .json ({error})") from error
            if isinstance(value, list) and value:
                # drawn from the shard's name, not its path, so that moved data draws the same
                draw = random.Random(f"{self.seed}/{self.epoch}/{Path(entry.shard).name}/{entry.key}")
                value = value[draw.randrange(len(value))]
        if not isinstance(value, str) or not value.strip():
            raise BadSampleError(f"{entry.name}: no caption (empty or missing {self.caption_field or 'txt'}: {value!r})")
        return value.strip()


def _image_bytes(entry: Entry) -> bytes:
    for extension in IMAGE_EXTENSIONS:
        if extension in entry.files:
            return entry.files[extension]
    raise BadSampleError(f"{entry.name}: no image (files: {', '.join(sorted(entry.files)) or 'none'})")


def _text(entry: Entry, extension: str) -> str:
    try:
        return entry.files[extension].decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadSampleError(f"{entry.name}: .{extension} is not UTF-8 ({error})") from error


def sample_id(key: str) -> int:
    """A sample's integer id: its key where numeric (img2dataset's are), else a checksum of it."""
    return int(key) if key.isdigit() and len(key) < 19 else zlib.crc32(key.encode())

