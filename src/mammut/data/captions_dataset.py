"""Image-caption samples for training (one caption per image) and evaluation (all of them).

In training the caption of image ``i`` is drawn from ``(seed, epoch, i)`` alone, never from
a global RNG or the worker id, so a resumed run sees the captions the interrupted run
would have seen, whatever the number of workers. The epoch lives in shared memory:
``set_epoch`` in the main process reaches DataLoader workers that already exist
(``persistent_workers=True``), as long as it is called before the epoch's iteration starts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mammut.data.batch import ImageCaptionsBatch, ImageTextBatch
from mammut.data.coco import CaptionRecord
from mammut.data.errors import BadSampleError
from mammut.data.images import load_rgb_image
from mammut.data.tokenizer import CaptionTokenizer

logger = logging.getLogger(__name__)


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


class CaptionDataset(Dataset):
    """Records of (image path, captions) -> ``TrainSample`` or ``EvalSample``.

    A sample whose image cannot be loaded raises ``BadSampleError`` naming the file, or,
    with ``skip_bad_samples``, is logged as a warning and returned as None; the collate
    functions drop it and count it in ``num_skipped``. A caption longer than the context is
    cut, keeping eos last, and described in the sample's ``truncated``, which the collate
    functions gather so that the run counts the cuts.
    """

    def __init__(
        self,
        records: Sequence[CaptionRecord],
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

    def caption_index(self, index: int, epoch: int | None = None) -> int:
        """Which caption of record ``index`` training uses in ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        # A string seed goes through SHA-512: the same draw in every process and Python run.
        draw = random.Random(f"{self.seed}/{epoch}/{index}")
        return draw.randrange(len(self.records[index].captions))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> TrainSample | EvalSample | None:
        record = self.records[index]
        try:
            image = self.transform(load_rgb_image(record.path))
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            logger.warning("skipping bad sample %d (image id %d): %s", index, record.image_id, error)
            return None
        if self.train:
            caption = record.captions[self.caption_index(index)]
            tokens, lengths = self.tokenizer.encode_batch([caption], self.context_length, return_lengths=True)
            return TrainSample(image=image, tokens=tokens[0], image_id=record.image_id,
                               truncated=self._truncated(record, lengths))
        caption_tokens, lengths = self.tokenizer.encode_batch(record.captions, self.context_length, return_lengths=True)
        return EvalSample(image=image, caption_tokens=caption_tokens, captions=record.captions, image_id=record.image_id,
                          truncated=self._truncated(record, lengths))

    def _truncated(self, record: CaptionRecord, lengths: list[int]) -> list[str]:
        return [f"image id {record.image_id}: caption of {n} tokens cut to the context length {self.context_length}"
                for n in lengths if n > self.context_length]


def collate_train(samples: Sequence[TrainSample | None]) -> ImageTextBatch:
    """Stack training samples, dropping None (bad) ones and counting them; gather the cut captions."""
    kept = [sample for sample in samples if sample is not None]
    num_skipped = len(samples) - len(kept)
    if not kept:
        return ImageTextBatch(
            images=torch.empty(0, 3, 0, 0),
            tokens=torch.empty(0, 0, dtype=torch.long),
            image_ids=torch.empty(0, dtype=torch.long),
            num_skipped=num_skipped,
        )
    return ImageTextBatch(
        images=torch.stack([sample.image for sample in kept]),
        tokens=torch.stack([sample.tokens for sample in kept]),
        image_ids=torch.tensor([sample.image_id for sample in kept], dtype=torch.long),
        num_skipped=num_skipped,
        truncated=[cut for sample in kept for cut in sample.truncated],
    )


def collate_eval(samples: Sequence[EvalSample | None]) -> ImageCaptionsBatch:
    """Stack evaluation samples and flatten their captions, dropping None (bad) ones."""
    kept = [sample for sample in samples if sample is not None]
    num_skipped = len(samples) - len(kept)
    if not kept:
        return ImageCaptionsBatch(
            images=torch.empty(0, 3, 0, 0),
            image_ids=torch.empty(0, dtype=torch.long),
            caption_tokens=torch.empty(0, 0, dtype=torch.long),
            caption_image_ids=torch.empty(0, dtype=torch.long),
            references=[],
            num_skipped=num_skipped,
        )
    return ImageCaptionsBatch(
        images=torch.stack([sample.image for sample in kept]),
        image_ids=torch.tensor([sample.image_id for sample in kept], dtype=torch.long),
        caption_tokens=torch.cat([sample.caption_tokens for sample in kept]),
        caption_image_ids=torch.tensor(
            [sample.image_id for sample in kept for _ in sample.captions], dtype=torch.long
        ),
        references=[list(sample.captions) for sample in kept],
        num_skipped=num_skipped,
        truncated=[cut for sample in kept for cut in sample.truncated],
    )
