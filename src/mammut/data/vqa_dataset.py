"""VQA samples: the question is a prefix to the decoder and the answer is generated after it.

Layout of a training sequence: ``[bos] question [sep] answer [eos] pad ...``; ``answer_start``
is the index of the first answer token, and the loss covers the answer and its eos only. The
question is cut to leave ``answer_room`` tokens for the answer and its eos, the same in training
and evaluation.
In evaluation the sequence stops after ``[sep]``: that prompt is what generation continues.

A training answer is drawn from the annotators' answers, normalised, with the probability of
how many annotators gave it, from ``(seed, epoch, index)`` alone (``ImageRecordsDataset.draw``),
so a resumed run draws the same answers. A question too long for its room is cut from its end
(an answer is cut only if it overflows what its question leaves); a sample with a cut text is
described in its ``truncated``, which ``collate_vqa`` gathers so that the run counts the cuts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mammut.answers import normalize_answer
from mammut.data.batch import VQABatch
from mammut.data.errors import DataFormatError
from mammut.data.image_dataset import ImageRecordsDataset, collate_samples
from mammut.data.vqa import VQARecord


@dataclass
class VQASample:
    image: Tensor  # (3, H, W) float
    tokens: Tensor  # (T,) long: the layout above, right-padded
    answer_start: int  # index of the first answer token = length of the prompt
    question_id: int
    question: str
    answers: list[str]  # the annotators' answers, as in the record
    truncated: list[str] = field(default_factory=list)  # the question and/or answer, if cut to fit


class VQADataset(ImageRecordsDataset):
    """``VQARecord``s -> ``VQASample``s; a bad image raises ``BadSampleError`` naming the file or,
    with ``skip_bad_samples``, is logged and returned as None, which ``collate_vqa`` counts."""

    records: list[VQARecord]

    def __init__(self, *args, answer_room: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        if not 2 <= answer_room <= self.context_length - 3:
            raise ValueError(f"answer_room {answer_room} must leave a question token and fit an answer token and its "
                             f"end of text in the context of {self.context_length}")
        self.answer_room = answer_room

    def record_name(self, record: VQARecord) -> str:
        return f"question id {record.question_id}"

    def answer_choices(self, index: int) -> tuple[list[str], list[int]]:
        """The distinct normalised answers of record ``index`` and how many annotators gave each."""
        counts = Counter(normalize_answer(a) for a in self.records[index].answers)
        counts.pop("", None)
        return list(counts), list(counts.values())

    def training_answer(self, index: int, epoch: int | None = None) -> str:
        answers, weights = self.answer_choices(index)
        if not answers:  # read_vqa rejects such questions; records may come from elsewhere
            raise DataFormatError(f"{self.record_name(self.records[index])}: no answer left after "
                                  f"normalisation: {list(dict.fromkeys(self.records[index].answers))}")
        return self.draw(index, epoch).choices(answers, weights)[0]

    def __getitem__(self, index: int) -> VQASample | None:
        image = self.load_image(index)
        if image is None:
            return None
        record = self.records[index]
        answer = self.tokenizer.token_ids(self.training_answer(index)) if self.train else []
        tokens, answer_start, truncated = self._layout(record, answer)
        return VQASample(image=image, tokens=torch.tensor(tokens), answer_start=answer_start,
                         question_id=record.question_id, question=record.question, answers=list(record.answers),
                         truncated=truncated)

    def _layout(self, record: VQARecord, answer: list[int]) -> tuple[list[int], int, list[str]]:
        """Tokens, the answer's start and the description of the cut, if the text was cut.

        The question is cut to leave ``answer_room`` tokens, whatever the answer: a prompt cut
        by the length of the answer drawn would tell the answer's length in training (and a
        training prompt would differ from the evaluation prompt of the same question). An answer
        longer than the room left after its question is cut instead.
        """
        t = self.tokenizer
        cuts = []
        room = self.context_length - 2 - self.answer_room  # bos and sep
        question = t.token_ids(record.question)
        if len(question) > room:
            cuts.append(f"question of {len(question)} tokens cut to {room}")
            question = question[:room]
        prompt = [t.bos_id, *question, t.sep_id]
        if answer:
            answer_room = self.context_length - len(prompt) - 1  # and eos
            if len(answer) > answer_room:
                cuts.append(f"answer of {len(answer)} tokens cut to {answer_room}")
            answer = answer[:answer_room] + [t.eos_id]
        truncated = [f"{self.record_name(record)}: {' and '.join(cuts)} "
                     f"to fit the context length {self.context_length}"] if cuts else []
        return t.pad(prompt + answer, self.context_length), len(prompt), truncated


def collate_vqa(samples: Sequence[VQASample | None]) -> VQABatch:
    """Stack VQA samples, dropping None (bad) ones and counting them; gather the cut texts."""
    return collate_samples(samples, VQABatch, lambda kept: {
        "images": torch.stack([s.image for s in kept]),
        "tokens": torch.stack([s.tokens for s in kept]),
        "answer_start": torch.tensor([s.answer_start for s in kept], dtype=torch.long),
        "question_ids": torch.tensor([s.question_id for s in kept], dtype=torch.long),
        "questions": [s.question for s in kept],
        "answers": [s.answers for s in kept],
    })
