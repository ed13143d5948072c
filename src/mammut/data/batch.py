"""Named batch types for image-text tasks.

They are dataclasses, so Lightning moves their tensors to the device, and ``pin_memory``
makes ``DataLoader(pin_memory=True)`` pin them too. ``len(batch)`` is the number of images.

A batch whose every sample was bad (``Batch.empty``) has zero images and ``num_skipped > 0``;
its tensors are empty, ``images`` of shape (0, 3, 0, 0), token tensors (named ``*tokens``)
of shape (0, 0) and the others of shape (0,), and its lists are empty. A training step
should skip it (and log ``num_skipped``).

``truncated`` describes each text of the batch that was cut to fit the context length
("image id 42: caption of 31 tokens cut to the context length 24"), so a run can count
them and name one; ``num_truncated`` is how many.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field

import torch
from torch import Tensor

B = typing.TypeVar("B", bound="Batch")


class Batch:
    """What the batch types share."""

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_truncated(self) -> int:
        return len(self.truncated)

    def pin_memory(self):
        return _pinned(self)

    @classmethod
    def empty(cls: type[B], num_skipped: int) -> B:
        """A batch whose every sample was bad: each field without a default empty, as the module docstring says."""
        hints = typing.get_type_hints(cls)
        required = [f.name for f in dataclasses.fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        return cls(**{name: _empty_tensor(name) if hints[name] is Tensor else [] for name in required},
                   num_skipped=num_skipped)


def _empty_tensor(name: str) -> Tensor:
    if name == "images":
        return torch.empty(0, 3, 0, 0)
    return torch.empty((0, 0) if name.endswith("tokens") else (0,), dtype=torch.long)


def _pinned(batch):
    """A copy of a dataclass batch with every tensor field in pinned memory, and the tensors of
    list fields (a tensor per image) too."""
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**{name: _pin(v) for name, v in values.items()})


def _pin(value):
    if isinstance(value, Tensor):
        return value.pin_memory()
    if isinstance(value, list) and any(isinstance(item, Tensor) for item in value):
        return [_pin(item) for item in value]
    return value


@dataclass
class ImageTextBatch(Batch):
    """Training: one caption per image."""

    images: Tensor  # (B, 3, H, W) float
    tokens: Tensor  # (B, T) long: [bos] caption [eos] pad ...
    image_ids: Tensor  # (B,) long
    num_skipped: int = 0  # samples of this batch dropped as bad
    truncated: list[str] = field(default_factory=list)  # texts cut to fit the context length


@dataclass
class ImageCaptionsBatch(Batch):
    """Evaluation: all captions of each image, flattened over the batch."""

    images: Tensor  # (B, 3, H, W) float
    image_ids: Tensor  # (B,) long
    caption_tokens: Tensor  # (M, T) long, every caption of the batch
    caption_image_ids: Tensor  # (M,) long, the image id of each caption
    references: list[list[str]]  # raw captions per image, for CIDEr/BLEU
    num_skipped: int = 0
    truncated: list[str] = field(default_factory=list)


@dataclass
class VQABatch(Batch):
    """Questions about images. In training ``tokens`` hold ``[bos] question [sep] answer [eos]``;
    in evaluation and prediction only the prompt ``[bos] question [sep]``. Right-padded."""

    images: Tensor  # (B, 3, H, W) float
    tokens: Tensor  # (B, T) long
    answer_start: Tensor  # (B,) long: index of the first answer token = length of the prompt
    question_ids: Tensor  # (B,) long
    questions: list[str]
    answers: list[list[str]]  # the annotators' answers; empty lists when there are none
    num_skipped: int = 0
    truncated: list[str] = field(default_factory=list)


@dataclass
class DetectionBatch(Batch):
    """Images and their objects. Images hold different numbers of boxes, so boxes and labels are
    lists with one tensor per image; ``known_categories`` says where the absence of a box is
    evidence (LVIS annotates each category in only some images), so a loss counts a category at
    an image only where it is known."""

    images: Tensor  # (B, 3, S, S) float
    boxes: list[Tensor]  # per image (N_i, 4) float: cx, cy, w, h as fractions of the image, in [0, 1]
    labels: list[Tensor]  # per image (N_i,) long: index into the dataset's categories (not the category id)
    crowd_boxes: list[Tensor]  # per image (C_i, 4), as boxes: crowd regions, neither right nor wrong to detect
    known_categories: Tensor  # (B, K) bool
    image_ids: Tensor  # (B,) long
    image_sizes: Tensor  # (B, 2) long: (height, width) of the image file
    num_skipped: int = 0
    truncated: list[str] = field(default_factory=list)  # always empty: no text is cut
    boxes_dropped: int = 0  # boxes of this batch dropped as too small once cropped


@dataclass
class ClassificationBatch(Batch):
    """Images of a zero-shot classification set with their class indices. Padding rows (a rank's
    share evened out with the others') have label -1."""

    images: Tensor  # (B, 3, H, W) float
    labels: Tensor  # (B,) long: index into the set's class names, -1 for padding
    dataset: str = ""  # the set's name, which keys its metrics
    num_skipped: int = 0
    truncated: list[str] = field(default_factory=list)  # always empty: no text is cut
