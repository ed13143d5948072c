"""Detection samples: an image, its boxes moved with the pixels, their category indices, and which
categories the image's annotations speak for.

Labels index the dataset's ``categories`` list (0..K-1), the rows of the text embeddings a
detector compares its boxes with, not the category ids of the file (COCO's run 1..90 with gaps).

``known_categories`` is LVIS's federated rule: a category is known at an image where it was
looked for, i.e. it has a box there or is among the image's ``neg_category_ids``, unless it is in
``not_exhaustive_category_ids`` (some of its instances have no box). Elsewhere an image without
a box of the category says nothing, and a loss that counted it as background would teach the
detector to miss it. A record without ``neg_category_ids`` (COCO) knows every category.

A training sample's flip and crop come from ``(seed, epoch, index)`` alone
(``ImageRecordsDataset.draw``), so a resumed run sees the samples the interrupted run would have
seen. An image that cannot be loaded, or whose size is not the one its boxes were drawn on,
raises ``BadSampleError`` naming the file or, with ``skip_bad_samples``, is logged and returned
as None, which ``collate_detection`` counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mammut.data.batch import DetectionBatch
from mammut.data.box_transforms import BoxedImage, DetectionTransform
from mammut.data.errors import BadSampleError, DataFormatError
from mammut.data.image_dataset import ImageRecordsDataset, collate_samples
from mammut.data.images import load_rgb_image
from mammut.data.instances import Category, DetectionRecord


@dataclass
class DetectionSample:
    image: Tensor  # (3, S, S) float
    boxes: Tensor  # (N, 4) float: cx, cy, w, h as fractions of the image
    labels: Tensor  # (N,) long: index into the dataset's categories (not the category id)
    crowd_boxes: Tensor  # (C, 4) float, as boxes
    known_categories: Tensor  # (K,) bool
    image_id: int
    image_size: tuple[int, int]  # (height, width) of the image file
    boxes_dropped: int  # boxes of the record dropped as too small once cropped
    truncated: list[str] = field(default_factory=list)  # always empty: no text is cut


class DetectionDataset(ImageRecordsDataset):
    """``DetectionRecord``s -> ``DetectionSample``s; a bad image raises ``BadSampleError`` naming the
    file or, with ``skip_bad_samples``, is logged and returned as None."""

    records: list[DetectionRecord]
    transform: DetectionTransform

    def __init__(self, records: Sequence[DetectionRecord], categories: Sequence[Category],
                 transform: DetectionTransform, train: bool, seed: int = 0, skip_bad_samples: bool = False):
        # No text per sample: neither a tokenizer nor a context length.
        super().__init__(records, tokenizer=None, transform=transform, context_length=0, train=train,
                         seed=seed, skip_bad_samples=skip_bad_samples)
        self.categories = list(categories)
        self.category_index = {category.id: k for k, category in enumerate(self.categories)}
        if len(self.category_index) != len(self.categories):
            raise ValueError("categories must have distinct ids")
        for record in self.records:
            unknown = set(record.category_ids).union(record.neg_category_ids or (), record.not_exhaustive_category_ids)
            unknown -= self.category_index.keys()
            if unknown:
                raise DataFormatError(f"{self.record_name(record)} ({record.path}): category ids {sorted(unknown)} "
                                      "are not among the dataset's categories")

    def record_name(self, record: DetectionRecord) -> str:
        return f"image id {record.image_id}"

    def read(self, index: int) -> BoxedImage:
        """Record ``index``'s image and boxes, transformed together."""
        record = self.records[index]
        image = load_rgb_image(record.path)
        if image.size != (record.width, record.height):
            raise BadSampleError(f"{record.path}: image is {image.size[0]}x{image.size[1]} pixels, but its annotations "
                                 f"say {record.width}x{record.height}; its boxes would be misplaced")
        boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
        crowd_boxes = torch.tensor(record.crowd_boxes, dtype=torch.float32).reshape(-1, 4)
        return self.transform(image, boxes, crowd_boxes, self.draw(index, purpose="boxes"))

    def known_categories(self, record: DetectionRecord) -> Tensor:
        """(K,) bool: the categories whose absence from ``record``'s boxes means they are absent."""
        if record.neg_category_ids is None:
            return torch.ones(len(self.categories), dtype=torch.bool)
        known = torch.zeros(len(self.categories), dtype=torch.bool)
        looked_for = set(record.category_ids).union(record.neg_category_ids)
        known[[self.category_index[c] for c in looked_for]] = True
        known[[self.category_index[c] for c in record.not_exhaustive_category_ids]] = False
        return known

    def __getitem__(self, index: int) -> DetectionSample | None:
        boxed = self.load_image(index)
        if boxed is None:
            return None
        record = self.records[index]
        labels = torch.tensor([self.category_index[c] for c in record.category_ids], dtype=torch.long)
        return DetectionSample(image=boxed.image, boxes=boxed.boxes, labels=labels[boxed.keep],
                               crowd_boxes=boxed.crowd_boxes, known_categories=self.known_categories(record),
                               image_id=record.image_id, image_size=(record.height, record.width),
                               boxes_dropped=boxed.boxes_dropped)


def collate_detection(samples: Sequence[DetectionSample | None]) -> DetectionBatch:
    """Stack the images of detection samples and list their boxes, dropping None (bad) ones and
    counting them."""
    return collate_samples(samples, DetectionBatch, lambda kept: {
        "images": torch.stack([s.image for s in kept]),
        "boxes": [s.boxes for s in kept],
        "labels": [s.labels for s in kept],
        "crowd_boxes": [s.crowd_boxes for s in kept],
        "known_categories": torch.stack([s.known_categories for s in kept]),
        "image_ids": torch.tensor([s.image_id for s in kept], dtype=torch.long),
        "image_sizes": torch.tensor([s.image_size for s in kept], dtype=torch.long),
        "boxes_dropped": sum(s.boxes_dropped for s in kept),
    })
