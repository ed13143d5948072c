"""VQA samples: the question is a prefix to the decoder and the answer is generated after it.

Layout of a training sequence: ``[bos] question [sep] answer [eos] pad ...``; ``answer_start``
is the index of the first answer token, and the loss covers the answer and its eos only.
In evaluation the sequence stops after ``[sep]``: that prompt is what generation continues.

A training answer is drawn from the annotators' answers, normalised, with the probability of
how many annotators gave it, from ``(seed, epoch, index)`` alone, so a resumed run draws the
same answers. A question too long for the context is cut from its end, keeping the answer
whole (an answer is cut only if it alone overflows the context); a sample with a cut text is
described in its ``truncated``, which ``collate_vqa`` gathers so that the run counts the cuts.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mammut.answers import normalize_answer
from mammut.data.batch import VQABatch
from mammut.data.errors import BadSampleError, DataFormatError
from mammut.data.images import load_rgb_image
from mammut.data.tokenizer import CaptionTokenizer
from mammut.data.vqa import VQARecord

logger = logging.getLogger(__name__)


class VQADataset(Dataset):
    """``VQARecord``s -> dict samples; a bad image raises ``BadSampleError`` naming the file or,
    with ``skip_bad_samples``, is logged and returned as None, which ``collate_vqa`` counts."""

    def __init__(
        self,
        records: Sequence[VQARecord],
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

    def answer_choices(self, index: int) -> tuple[list[str], list[int]]:
        """The distinct normalised answers of record ``index`` and how many annotators gave each."""
        counts = Counter(normalize_answer(a) for a in self.records[index].answers)
        counts.pop("", None)
        return list(counts), list(counts.values())

    def training_answer(self, index: int, epoch: int | None = None) -> str:
        epoch = int(self._epoch) if epoch is None else epoch
        answers, weights = self.answer_choices(index)
        if not answers:  # read_vqa rejects such questions; records may come from elsewhere
            raise DataFormatError(f"question id {self.records[index].question_id}: no answer left after "
                                  f"normalisation: {list(dict.fromkeys(self.records[index].answers))}")
        # A string seed goes through SHA-512: the same draw in every process and Python run.
        return random.Random(f"{self.seed}/{epoch}/{index}").choices(answers, weights)[0]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        try:
            image = self.transform(load_rgb_image(record.path))
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            logger.warning("skipping bad sample %d (question id %d): %s", index, record.question_id, error)
            return None
        answer = self.tokenizer.token_ids(self.training_answer(index)) if self.train else []
        tokens, answer_start, truncated = self._layout(record, answer)
        return {"image": image, "tokens": torch.tensor(tokens), "answer_start": answer_start,
                "question_id": record.question_id, "question": record.question, "answers": list(record.answers),
                "truncated": truncated}

    def _layout(self, record: VQARecord, answer: list[int]) -> tuple[list[int], int, list[str]]:
        """Tokens, the answer's start and the description of the cut, if the text was cut."""
        t = self.tokenizer
        cuts = []
        answer_room = self.context_length - 4  # bos, sep, eos and at least one question token
        if len(answer) > answer_room:
            cuts.append(f"answer of {len(answer)} tokens cut to {answer_room}")
        answer = answer[:answer_room] + [t.eos_id] if answer else []
        room = self.context_length - 2 - len(answer)  # bos and sep
        question = t.token_ids(record.question)
        if len(question) > room:
            cuts.append(f"question of {len(question)} tokens cut to {room}")
            question = question[:room]
        prompt = [t.bos_id, *question, t.sep_id]
        truncated = [f"question id {record.question_id}: {' and '.join(cuts)} "
                     f"to fit the context length {self.context_length}"] if cuts else []
        return t.pad(prompt + answer, self.context_length), len(prompt), truncated


def collate_vqa(samples: Sequence[dict | None]) -> VQABatch:
    """Stack VQA samples, dropping None (bad) ones and counting them; gather the cut texts."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        return VQABatch.empty(num_skipped=len(samples))
    return VQABatch(
        images=torch.stack([s["image"] for s in kept]),
        tokens=torch.stack([s["tokens"] for s in kept]),
        answer_start=torch.tensor([s["answer_start"] for s in kept], dtype=torch.long),
        question_ids=torch.tensor([s["question_id"] for s in kept], dtype=torch.long),
        questions=[s["question"] for s in kept],
        answers=[s["answers"] for s in kept],
        num_skipped=len(samples) - len(kept),
        truncated=[cut for s in kept for cut in s["truncated"]],
    )
