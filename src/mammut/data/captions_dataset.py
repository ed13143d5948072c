"""Image-caption samples for training (one caption per image) and evaluation (all of them).

In training the caption of image ``i`` is drawn from ``(seed, epoch, i)`` alone
(``ImageRecordsDataset.draw``), so a resumed run sees the captions the interrupted run would
have seen, whatever the number of workers; ``set_epoch`` reaches DataLoader workers too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mammut.data.batch import ImageCaptionsBatch, ImageTextBatch
from mammut.data.coco import CaptionRecord
from mammut.data.image_dataset import ImageRecordsDataset, collate_samples


@dataclass
class TrainSample:
    image: Tensor  # (3, H, W) float
    tokens: Tensor  # (T,) long: [bos] caption [eos] pad ...
    image_id: int
    truncated: list[str] = field(default_factory=list)  # the caption, if it was cut to fit


@dataclass
class EvalSample:
    image: Tensor  # (3, H, W) float
    caption_tokens: Tensor  # (n, T) long, one row per caption
    captions: tuple[str, ...]
    image_id: int
    truncated: list[str] = field(default_factory=list)  # one entry per caption cut to fit


class CaptionDataset(ImageRecordsDataset):
    """``CaptionRecord``s -> ``TrainSample`` or ``EvalSample``.

    A sample whose image cannot be loaded raises ``BadSampleError`` naming the file, or,
    with ``skip_bad_samples``, is logged as a warning and returned as None; the collate
    functions drop it and count it in ``num_skipped``. A caption longer than the context is
    cut, keeping eos last, and described in the sample's ``truncated``, which the collate
    functions gather so that the run counts the cuts.
    """

    records: list[CaptionRecord]

    def record_name(self, record: CaptionRecord) -> str:
        return f"image id {record.image_id}"

    def caption_index(self, index: int, epoch: int | None = None) -> int:
        """Which caption of record ``index`` training uses in ``epoch`` (default: current)."""
        return self.draw(index, epoch).randrange(len(self.records[index].captions))

    def __getitem__(self, index: int) -> TrainSample | EvalSample | None:
        image = self.load_image(index)
        if image is None:
            return None
        record = self.records[index]
        if self.train:
            caption = record.captions[self.caption_index(index)]
            tokens, lengths = self.tokenizer.encode_batch([caption], self.context_length, return_lengths=True)
            return TrainSample(image=image, tokens=tokens[0], image_id=record.image_id,
                               truncated=self._truncated(record, lengths))
        caption_tokens, lengths = self.tokenizer.encode_batch(record.captions, self.context_length, return_lengths=True)
        return EvalSample(image=image, caption_tokens=caption_tokens, captions=record.captions, image_id=record.image_id,
                          truncated=self._truncated(record, lengths))

    def _truncated(self, record: CaptionRecord, lengths: list[int]) -> list[str]:
        return [f"{self.record_name(record)}: caption of {n} tokens cut to the context length {self.context_length}"
                for n in lengths if n > self.context_length]


def collate_train(samples: Sequence[TrainSample | None]) -> ImageTextBatch:
    """Stack training samples, dropping None (bad) ones and counting them; gather the cut captions."""
    return collate_samples(samples, ImageTextBatch, lambda kept: {
        "images": torch.stack([sample.image for sample in kept]),
        "tokens": torch.stack([sample.tokens for sample in kept]),
        "image_ids": torch.tensor([sample.image_id for sample in kept], dtype=torch.long),
    })


def collate_eval(samples: Sequence[EvalSample | None]) -> ImageCaptionsBatch:
    """Stack evaluation samples and flatten their captions, dropping None (bad) ones."""
    return collate_samples(samples, ImageCaptionsBatch, lambda kept: {
        "images": torch.stack([sample.image for sample in kept]),
        "image_ids": torch.tensor([sample.image_id for sample in kept], dtype=torch.long),
        "caption_tokens": torch.cat([sample.caption_tokens for sample in kept]),
        "caption_image_ids": torch.tensor(
            [sample.image_id for sample in kept for _ in sample.captions], dtype=torch.long
        ),
        "references": [list(sample.captions) for sample in kept],
    })
