"""A classification set's images as a stream, each rank and loader worker reading its own share.

The stream is iterable rather than indexed because CLIP_benchmark's sets are tar shards, read in
order with the ``webdataset`` library. Sample ``i`` of the set goes to slot ``i mod (ranks ×
workers)``, so every sample is read once across ranks and workers. Every slot yields the same
number of items, the last ones padding (a blank image with label -1, which metrics leave out):
every rank then runs the same number of batches, which a sharded model's collectives need.

Whether the stream yields anything at all is decided when a loader starts iterating it
(``GatedLoader``): a data module evaluates zero-shot classification only at some validations.
"""

from __future__ import annotations

import logging
import math
import tarfile
from collections.abc import Callable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mammut.data.batch import ClassificationBatch
from mammut.data.classification import WDS_IMAGE_EXTENSIONS, ClassificationSet, ClassifiedImage
from mammut.data.errors import BadSampleError
from mammut.data.images import decode_rgb_image, load_rgb_image

log = logging.getLogger(__name__)

PADDING = -1  # the label of a padding item


class ClassificationStream(IterableDataset):
    """Items ``(image tensor, label)`` of a ``ClassificationSet``, this rank's and
    this worker's share, padded to the same count in every slot; an unreadable image raises
    ``BadSampleError`` naming it, or with ``skip_bad_samples`` is yielded as None."""

    def __init__(self, dataset: ClassificationSet, name: str, transform: Callable[[Image.Image], Tensor],
                 image_size: int, skip_bad_samples: bool = False):
        self.set, self.name, self.transform = dataset, name, transform
        self.image_size, self.skip_bad_samples = image_size, skip_bad_samples
        self.rank, self.world_size = 0, 1  # set by the data module for its trainer's ranks

    def slot(self) -> tuple[int, int]:
        """(this rank and worker's slot, number of slots)."""
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        return self.rank * workers + worker_id, self.world_size * workers

    def __iter__(self) -> Iterator[tuple[Tensor, int] | None]:
        slot, slots = self.slot()
        share = math.ceil(len(self.set.images) / slots)
        count = 0
        for index, read in self._samples(slot, slots):
            count += 1
            yield self._item(index, read)
        blank = torch.zeros(3, self.image_size, self.image_size)
        for _ in range(share - count):
            yield blank, PADDING

    def _samples(self, slot: int, slots: int) -> Iterator[tuple[int, Callable[[], Image.Image]]]:
        """(index, a function that decodes the image) of each sample in this slot, in set order."""
        if not self.set.shards:
            for index in range(slot, len(self.set.images), slots):
                path = self.set.images[index].source
                yield index, lambda path=path: load_rgb_image(path)
            return
        # Every slot reads the shards through (tar reading is cheap) and decodes only its own samples.
        stream = wds.WebDataset(self.set.shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                empty_check=False)
        index = 0
        try:
            for sample in stream:
                extension = next((e for e in WDS_IMAGE_EXTENSIONS if e in sample), None)
                if extension is None:
                    continue  # the listing counted only samples with an image
                if index % slots == slot:
                    name = self.set.images[index].name
                    yield index, lambda data=sample[extension], name=name: decode_rgb_image(data, name)
                index += 1
        except (OSError, ValueError, tarfile.TarError) as error:  # a shard truncated or changed since it was listed
            raise BadSampleError(f"{sample_source(self.set, index)}: the shards cannot be read past here "
                                 f"({type(error).__name__}: {error})") from error
        if index != len(self.set.images):
            raise BadSampleError(f"{self.set.source}: the shards hold {index} samples with images now, "
                                 f"{len(self.set.images)} when they were listed")

    def _item(self, index: int, read: Callable[[], Image.Image]) -> tuple[Tensor, int] | None:
        image = self.set.images[index]
        try:
            return self.transform(read()), image.label
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            log.warning("skipping bad sample %d of zero-shot set %s (%s): %s", index, self.name, image.name, error)
            return None


def sample_source(dataset: ClassificationSet, index: int) -> str:
    """The shard (and key) around sample ``index``, for a message."""
    images: list[ClassifiedImage] = dataset.images
    return images[min(index, len(images) - 1)].name if images else str(dataset.source)


def collate_classification(name: str) -> Callable[[list], ClassificationBatch]:
    """Collation for the stream of set ``name``: None items (bad samples skipped) are counted."""
    def collate(items: list[tuple[Tensor, int] | None]) -> ClassificationBatch:
        kept = [item for item in items if item is not None]
        if not kept:
            batch = ClassificationBatch.empty(len(items))
            batch.dataset = name
            return batch
        return ClassificationBatch(images=torch.stack([item[0] for item in kept]),
                                   labels=torch.tensor([item[1] for item in kept], dtype=torch.long),
                                   dataset=name, num_skipped=len(items) - len(kept))
    return collate


class GatedLoader(DataLoader):
    """A loader that yields nothing when ``due()`` says no as an iteration starts: Lightning keeps
    evaluation loaders for the whole run, and this one is needed only at some validations."""

    def __init__(self, *args, due: Callable[[], bool] = lambda: True, **kwargs):
        super().__init__(*args, **kwargs)
        self.due = due

    def __iter__(self):
        return super().__iter__() if self.due() else iter(())
