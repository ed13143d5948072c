"""Named batch types for image-text tasks.

They are dataclasses, so Lightning moves their tensors to the device, and ``pin_memory``
makes ``DataLoader(pin_memory=True)`` pin them too. ``len(batch)`` is the number of images.

A batch whose every sample was bad has zero images and ``num_skipped > 0``; its tensors
are empty, ``images`` of shape (0, 3, 0, 0) and token tensors of shape (0, 0). A training
step should skip it (and log ``num_skipped``).

``truncated`` describes each text of the batch that was cut to fit the context length
("image id 42: caption of 31 tokens cut to the context length 24"), so a run can count
them and name one; ``num_truncated`` is how many.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor


class _Batch:
    """What the batch types share."""

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_truncated(self) -> int:
        return len(self.truncated)

    def pin_memory(self):
        return _pinned(self)


def _pinned(batch):
    """A copy of a dataclass batch with every tensor field in pinned memory."""
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**{name: v.pin_memory() if isinstance(v, Tensor) else v for name, v in values.items()})


@dataclass
class ImageTextBatch(_Batch):
    """Training: one caption per image."""

    images: Tensor  # (B, 3, H, W) float
    tokens: Tensor  # (B, T) long: [bos] caption [eos] pad ...
    image_ids: Tensor  # (B,) long
    num_skipped: int = 0  # samples of this batch dropped as bad
    truncated: list[str] = field(default_factory=list)  # texts cut to fit the context length


@dataclass
class ImageCaptionsBatch(_Batch):
    """Evaluation: all captions of each image, flattened over the batch."""

    images: Tensor  # (B, 3, H, W) float
    image_ids: Tensor  # (B,) long
    caption_tokens: Tensor  # (M, T) long, every caption of the batch
    caption_image_ids: Tensor  # (M,) long, the image id of each caption
    references: list[list[str]]  # raw captions per image, for CIDEr/BLEU
    num_skipped: int = 0
    truncated: list[str] = field(default_factory=list)


@dataclass
class VQABatch(_Batch):
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

    @classmethod
    def empty(cls, num_skipped: int) -> VQABatch:
        """A batch whose every sample was bad."""
        return cls(images=torch.empty(0, 3, 0, 0), tokens=torch.empty(0, 0, dtype=torch.long),
                   answer_start=torch.empty(0, dtype=torch.long), question_ids=torch.empty(0, dtype=torch.long),
                   questions=[], answers=[], num_skipped=num_skipped)

