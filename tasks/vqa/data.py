"""Questions about images in VQAv2 format, and what every question-answering data module shares."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from mammut.data import VQADataset, VQARecord, collate_vqa, read_vqa
from mammut.data.tokenizer import words_in_pieces
from mammut.metrics.vqa import (ANSWER_SCORING, majority_answers,
                                most_frequent_answer)
from mammut.tasks.datamodule import TaskDataModule
from mammut.tasks.vqa.task import QuestionInputs

GROUPINGS = ("question_type", "answer_type")


class QuestionData:
    """What a question-answering data module adds to ``TaskDataModule``, for images or video:
    the collation, predictions from input files and questions, and the inputs of ``VQATask``
    (question groups, the majority baseline, the answer scoring)."""

    collate_train = collate_eval = staticmethod(collate_vqa)
    # VQAv2's 10 annotators per question: scored by the VQA accuracy, broken down by both types.
    answer_scoring = "vqa"
    groupings = GROUPINGS
    predict_inputs = "predict_images"  # the argument that lists the files to ask about

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the training answers too when evaluating: the majority baseline needs them
        if stage == "predict":
            self.records["predict"] = self._predict_records()

    def _predict_records(self) -> list[VQARecord]:
        name = self.predict_inputs
        inputs, questions = self.hparams[name] or [], self.hparams.predict_questions or []
        if not inputs or not questions:
            raise ValueError(f"nothing to answer: set --data.{name}=[...] and "
                             "--data.predict_questions=['what color is the star?', ...]")
        if len(questions) == 1:
            questions = questions * len(inputs)
        if len(questions) != len(inputs):
            raise ValueError(f"{len(inputs)} {name} but {len(questions)} predict_questions: "
                             "give one question per input, or one for all")
        return [VQARecord(question_id=i, image_id=-1, path=Path(path), question=question.strip())
                for i, (path, question) in enumerate(zip(inputs, questions))]

    def task_inputs(self, task: str) -> QuestionInputs:
        """Per evaluated split: each question's groups (``groupings``), and the accuracy of the
        majority baseline (the most frequent training answer of its question type); how answers
        are scored; the input and question of each prediction; and the training answer words that
        the tokenizer spells in pieces."""
        inputs = QuestionInputs(self.input_shape, answer_scoring=self.answer_scoring)
        score = ANSWER_SCORING[self.answer_scoring]
        train = self.records.get("train")
        if train:
            majority = majority_answers((r.question_type, r.answers) for r in train)
            overall = most_frequent_answer(a for r in train for a in r.answers)
        for split in ("val", "test"):
            records = self.records.get(split)
            if not records:
                continue
            inputs.question_groups[split] = {g: {r.question_id: getattr(r, g) for r in records}
                                             for g in self.groupings}
            if train and all(r.answers for r in records):
                inputs.majority_baseline[split] = {
                    r.question_id: score(majority.get(r.question_type, overall), r.answers) for r in records}
        inputs.predict = {r.question_id: (str(r.path), r.question) for r in self.records.get("predict", [])}
        if train:
            inputs.answer_words_in_pieces = words_in_pieces(self.tokenizer, (a for r in train for a in r.answers))
        return inputs

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.dataset("predict"), collate_vqa)

    def dataset_arguments(self) -> dict:
        return {"answer_room": self.hparams.answer_room}


class VQADataModule(QuestionData, TaskDataModule):
    """Questions about images in VQAv2 format: the demo world, VQAv2 itself, or your own files."""

    dataset_class = VQADataset

    def __init__(
        self,
        train_questions: str = "vqa/v2_OpenEnded_mscoco_train_questions.json",
        train_annotations: str = "vqa/v2_mscoco_train_annotations.json",
        train_images: str = "images/train",
        val_questions: str = "vqa/v2_OpenEnded_mscoco_val_questions.json",
        val_annotations: str = "vqa/v2_mscoco_val_annotations.json",
        val_images: str = "images/val",
        test_questions: str | None = "vqa/v2_OpenEnded_mscoco_test_questions.json",
        test_annotations: str | None = "vqa/v2_mscoco_test_annotations.json",
        test_images: str | None = "images/test",
        image_pattern: str = "{image_id:012d}.jpg",
        predict_images: list[str] | None = None,
        predict_questions: list[str] | None = None,
        answer_room: int = 4,
        batch_size: int = 128,
        eval_batch_size: int = 250,
        **kwargs,
    ):
        """
        Args:
            train_questions: VQAv2 questions JSON, relative to ``root``; ``*_annotations`` its
                answers, ``*_images`` the image folder.
            image_pattern: an image's file name from its id, e.g. ``COCO_train2014_{image_id:012d}.jpg``.
            predict_images: image files to ask about with ``mammut predict``.
            predict_questions: one question per image, or one question for all of them.
            answer_room: tokens kept for the answer and its end of text: a longer question is cut
                to leave them, the same in training and evaluation (so that a training prompt never
                tells the length of its answer).
            batch_size: training questions per step and device.
            eval_batch_size: questions per evaluation step.
            **kwargs: those of ``TaskDataModule``: root, tokenizer, image_size, context_length
                (question and answer together), num_workers, skip_bad_samples, seed.
        """
        super().__init__(**kwargs)
        self.save_arguments(locals())

    def read_split(self, split: str) -> tuple[list[VQARecord], int, Path]:
        h = self.hparams
        questions, annotations, images = h[f"{split}_questions"], h[f"{split}_annotations"], h[f"{split}_images"]
        if questions is None:
            raise ValueError(f"data.{split}_questions is not set")
        if split == "train" and not annotations:
            raise ValueError("training needs answers: set data.train_annotations")
        records, skipped = read_vqa(self.path(questions), annotations and self.path(annotations),
                                    self.path(images), h.image_pattern, h.skip_bad_samples)
        return records, skipped, self.path(questions)
