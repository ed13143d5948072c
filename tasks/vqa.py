"""VQA fine-tuning with generated answers (MaMMUT, arXiv 2303.16839, Sec. 3.4 and 4.3).

    mammut fit --config configs/finetune_vqa.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut fit --config configs/finetune_vqa_peft.yaml --model.init_from=...   # eP-ALM-style PEFT

``VQATask`` is the task (``mammut.task.Task``) on the shared model; ``VQAModule`` is the preset
of a ``MammutModule`` with that one task. The question is a prefix to the decoder's generative pass and the answer is generated after
it: there is no fixed answer vocabulary. Training is teacher-forced and its loss covers the
answer tokens only. Evaluation generates an answer (greedy or beam search, ``generation``)
and scores it with the official VQAv2 accuracy, overall and per question and answer type,
each beside the majority-answer baseline: the most frequent training answer of the
question's type.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from mammut.data import VQABatch, VQADataset, VQARecord, collate_vqa, read_vqa
from mammut.data.tokenizer import words_in_pieces
from mammut.data.transforms import denormalize
from mammut.metrics.vqa import (ANSWER_SCORING, VQAAccuracy, accuracy_breakdown, majority_answers,
                                most_frequent_answer)
from mammut.model import Mammut, MammutConfig, PrefixConfig, VisualPrefix, generate_after_prompts
from mammut.module import MammutModule
from mammut.task import Task, TaskContext, TaskLoss, TaskReport
from mammut.tasks.datamodule import TaskDataModule

GROUPINGS = ("question_type", "answer_type")

log = logging.getLogger(__name__)


class QuestionData:
    """What a question-answering data module adds to ``TaskDataModule``, for images or video:
    the collation, predictions from input files and questions, and the references of
    ``VQATask`` (question groups, the majority baseline, the answer scoring)."""

    collate_train = collate_eval = staticmethod(collate_vqa)
    # VQAv2's 10 annotators per question: scored by the VQA accuracy, broken down by both types.
    answer_scoring = "vqa"
    groupings = GROUPINGS
    predict_inputs = "predict_images"  # the argument that lists the files to ask about

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the training answers too when evaluating: the majority baseline needs them
        if stage == "fit":
            self._check_answer_words()
        if stage == "predict":
            self.records["predict"] = self._predict_records()

    def _check_answer_words(self) -> None:
        """Warn when answer words are not single tokens: a frozen decoder (PEFT) has to be taught
        each of their pieces, and learns them only through LoRA on the vocabulary projection."""
        answers = {answer for record in self.records.get("train", []) for answer in record.answers}
        in_pieces = words_in_pieces(self.tokenizer, answers)
        if in_pieces:
            word, pieces = next(iter(in_pieces.items()))
            log.warning("%d answer words of the training split are several tokens of the tokenizer (e.g. %r: %s). "
                        "Full fine-tuning learns them; for PEFT, train the tokenizer on the answers too "
                        "(python -m mammut.data.tokenizer --vqa ... --answers ...).", len(in_pieces), word, pieces)

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

    def references_for(self, task: str) -> dict:
        """Per evaluated split: each question's groups (``groupings``), and the accuracy of the
        majority baseline (the most frequent training answer of its question type); how answers
        are scored; and the input and question of each prediction."""
        references = {"question_groups": {}, "majority_baseline": {}, "predict": {},
                      "answer_scoring": self.answer_scoring}
        score = ANSWER_SCORING[self.answer_scoring]
        train = self.records.get("train")
        if train:
            majority = majority_answers((r.question_type, r.answers) for r in train)
            overall = most_frequent_answer(a for r in train for a in r.answers)
        for split in ("val", "test"):
            records = self.records.get(split)
            if not records:
                continue
            references["question_groups"][split] = {g: {r.question_id: getattr(r, g) for r in records}
                                                    for g in self.groupings}
            if train and all(r.answers for r in records):
                references["majority_baseline"][split] = {
                    r.question_id: score(majority.get(r.question_type, overall), r.answers) for r in records}
        references["predict"] = {r.question_id: (str(r.path), r.question) for r in self.records.get("predict", [])}
        return references

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


def answer_loss(logits: Tensor, tokens: Tensor, answer_start: Tensor, pad_id: int,
                label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the answer tokens (and their eos) only.

    logits: (B, T-1, V) predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``; answer_start: (B,)
    index in ``tokens`` of each first answer token. Question and padding positions are ignored.
    """
    targets = tokens[:, 1:].clone()
    target_position = torch.arange(1, tokens.shape[1], device=tokens.device)
    targets[(target_position[None, :] < answer_start[:, None]) | (targets == pad_id)] = -100
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing)


class VQATask(Task):
    """VQA with generated answers; optionally eP-ALM-style, with a trained prefix on a frozen model."""

    def __init__(self, peft: PrefixConfig | None = None, label_smoothing: float = 0.0, num_logged_samples: int = 16):
        """
        Args:
            peft: add a learned prefix (prompt tokens and projected visual tokens of chosen
                encoder layers, see ``mammut.model.prefix``) in front of the question. Freeze
                the model with ``freeze: ["model.*"]`` to train the prefix alone.
            label_smoothing: of the answer cross-entropy.
            num_logged_samples: validation images drawn with question, answer and ground truth.
        """
        super().__init__()
        # LightningCLI stores the arguments as given, not instantiated.
        self.peft = PrefixConfig(**peft) if isinstance(peft, dict) else peft
        self.label_smoothing, self.num_logged_samples = label_smoothing, num_logged_samples
        self.metrics = torch.nn.ModuleDict({"val": VQAAccuracy(), "test": VQAAccuracy()})
        self.prefix: VisualPrefix | None = None
        self._samples: dict[str, tuple[Tensor, list[str]]] = {}

    def build(self, architecture: MammutConfig) -> None:
        if self.peft:
            self.prefix = VisualPrefix(self.peft, architecture.vision_width, architecture.text_width)

    def legacy_keys(self) -> dict[str, str]:
        return {"prefix.": "prefix."}  # VQAModule held the prefix itself

    def connect(self, context: TaskContext) -> None:
        super().connect(context)
        # The data says how its answers are scored: VQAv2's formula, or exact match for one reference.
        scoring = context.references.get("answer_scoring", "vqa")
        for metric in self.metrics.values():
            metric.scoring = scoring

    # --------------------------------------------------------------- forward
    def encode(self, model: Mammut, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Visual tokens, and the PEFT prefix if there is one."""
        frozen = not any(p.requires_grad for p in model.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if self.prefix is None:
                return model.encode_image(images), None
            visual_tokens, layer_tokens = model.encode_image_with_layers(images, self.prefix.config.visual_layers)
        return visual_tokens, self.prefix(layer_tokens)

    def empty_batch(self, device) -> VQABatch:
        c = self.context.architecture
        empty = VQABatch.empty(num_skipped=0)
        empty.images = self.empty_inputs(device)
        empty.tokens = torch.zeros(0, c.context_length, dtype=torch.long, device=device)
        return empty

    def loss(self, model: Mammut, batch: VQABatch) -> TaskLoss:
        visual_tokens, prefix = self.encode(model, batch.images)
        logits = model.caption_logits(batch.tokens[:, :-1], visual_tokens, prefix)
        if len(batch):
            loss = answer_loss(logits, batch.tokens, batch.answer_start, model.config.pad_id, self.label_smoothing)
        else:
            loss = logits.sum()  # zero, and joined to the graph
        return TaskLoss(loss, {"answer_loss": loss})

    def answer(self, model: Mammut, batch: VQABatch) -> list[str]:
        """Generated answers to the batch's questions (``batch.tokens`` holds the prompts)."""
        visual_tokens, prefix = self.encode(model, batch.images)
        generated = generate_after_prompts(model, visual_tokens, batch.tokens, batch.answer_start,
                                           self.context.generation, prefix)
        return self.tokenizer.decode_batch(generated)

    # ------------------------------------------------------------- evaluation
    def evaluate(self, model: Mammut, batch: VQABatch, stage: str, batch_idx: int) -> None:
        predictions = self.answer(model, batch)
        self.metrics[stage].update(predictions, batch.answers, batch.question_ids)
        if batch_idx == 0:
            n = self.num_logged_samples
            texts = [f"Q: {q} A: {p} (truth: {most_frequent_answer(a)})"
                     for q, p, a in zip(batch.questions[:n], predictions[:n], batch.answers[:n])]
            self._samples[stage] = (denormalize(batch.images[:n]), texts)

    def report(self, stage: str) -> TaskReport | None:
        scores = self.metrics[stage].compute()
        samples = self._samples.pop(stage, None)
        self.metrics[stage].reset()
        if not scores:
            return None
        references = self.context.references
        groups = references["question_groups"][stage]
        model = accuracy_breakdown(scores, groups)
        baseline_scores = references["majority_baseline"].get(stage)
        baseline = accuracy_breakdown({q: baseline_scores[q] for q in scores}, groups) if baseline_scores else {}
        counts = Counter(f"{grouping}/{of_question[q]}" for grouping, of_question in groups.items() for q in scores)
        counts["accuracy"] = len(scores)
        return TaskReport(model, baseline, dict(counts), samples)

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
        self._samples.pop(stage, None)

    # ------------------------------------------------------------- prediction
    def predict(self, model: Mammut, batch: VQABatch) -> list[dict]:
        records = self.context.references["predict"]
        answers = self.answer(model, batch)
        return [{"image": records[q][0], "question": records[q][1], "answer": a}
                for q, a in zip(batch.question_ids.tolist(), answers)]


class VQAModule(MammutModule):
    """The preset for VQA alone: a ``MammutModule`` with one ``VQATask`` named "vqa"."""

    def __init__(
        self,
        peft: PrefixConfig | None = None,
        label_smoothing: float = 0.0,
        num_logged_samples: int = 16,
        **kwargs,
    ):
        """
        Args: those of ``VQATask``, and ``**kwargs``: the shared settings of ``MammutModule``
        (architecture, lr, init_from, freeze, ...).
        """
        super().__init__(tasks={"vqa": VQATask(peft, label_smoothing, num_logged_samples)}, **kwargs)
