"""What the image datasets share: records with an image each, an epoch, per-sample
randomness, image loading that can skip bad samples, and the collation of their samples.

Whatever a training sample draws at random (a caption, an answer) comes from
``(seed, epoch, index)`` alone, never from a global RNG or the worker id, so a resumed run
sees the samples the interrupted run would have seen, whatever the number of workers. The
epoch lives in shared memory: ``set_epoch`` in the main process reaches DataLoader workers
that already exist (``persistent_workers=True``), as long as it is called before the epoch's
iteration starts.

A sample whose image cannot be loaded raises ``BadSampleError`` naming the file, or, with
``skip_bad_samples``, is logged as a warning and returned as None; ``collate_samples`` drops
it and counts it in the batch's ``num_skipped``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mammut.data.batch import Batch
from mammut.data.errors import BadSampleError
from mammut.data.images import load_rgb_image
from mammut.data.tokenizer import CaptionTokenizer

B = TypeVar("B", bound=Batch)


class ImageRecordsDataset(Dataset):
    """Records, each with the ``path`` of its image, turned into samples by a subclass's
    ``__getitem__``; the subclass names a record in messages with ``record_name``."""

    def __init__(
        self,
        records: Sequence,
        tokenizer: CaptionTokenizer,
        transform: Callable[[Image.Image], Tensor],
        context_length: int,
        train: bool,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ):
        self.records = list(records)
        self.tokenizer = tokenizer
        self.transform = transform
        self.context_length = context_length
        self.train = train
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.records)

    def record_name(self, record) -> str:
        """How messages name a record, e.g. "image id 5"."""
        raise NotImplementedError

    def draw(self, index: int, epoch: int | None = None, purpose: str = "") -> random.Random:
        """The random source of sample ``index`` in ``epoch`` (default: the current one); each
        ``purpose`` (a caption, the frames of a clip) draws from its own stream."""
        epoch = self.epoch if epoch is None else epoch
        # A string seed goes through SHA-512: the same draw in every process and Python run.
        return random.Random(f"{self.seed}/{epoch}/{index}" + (f"/{purpose}" if purpose else ""))

    def read(self, index: int) -> Tensor:
        """Record ``index``'s model input: its image, transformed (a video dataset reads a clip)."""
        return self.transform(load_rgb_image(self.records[index].path))

    def load_image(self, index: int) -> Tensor | None:
        """The model input of record ``index``; None if it is bad and bad samples are skipped."""
        record = self.records[index]
        try:
            return self.read(index)
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            # The subclass's module logs it, so logging set up for that module sees it.
            logging.getLogger(type(self).__module__).warning(
                "skipping bad sample %d (%s): %s", index, self.record_name(record), error)
            return None


def collate_samples(samples: Sequence[Any | None], batch_type: type[B],
                    fields: Callable[[list[Any]], dict[str, Any]]) -> B:
    """A ``batch_type`` of the samples that are not None, built from ``fields(kept)``, with the
    dropped ones counted and the samples' ``truncated`` descriptions gathered."""
    kept = [sample for sample in samples if sample is not None]
    num_skipped = len(samples) - len(kept)
    if not kept:
        return batch_type.empty(num_skipped)
    return batch_type(**fields(kept), num_skipped=num_skipped,
                      truncated=[cut for sample in kept for cut in sample.truncated])
