"""VQA fine-tuning with generated answers (MaMMUT, arXiv 2303.16839, Sec. 3.4 and 4.3).

    mammut fit --config configs/finetune_vqa.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut fit --config configs/finetune_vqa_peft.yaml --model.init_from=...   # eP-ALM-style PEFT

The question is a prefix to the decoder's generative pass and the answer is generated after
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

from mammut.data import VQABatch, VQADataset, VQARecord, collate_vqa, image_transform, read_vqa
from mammut.data.transforms import denormalize
from mammut.metrics.vqa import VQAAccuracy, accuracy_breakdown, majority_answers, most_frequent_answer, vqa_accuracy
from mammut.model import PrefixConfig, VisualPrefix, generate_after_prompts
from mammut.module import MammutModule
from mammut.tasks.datamodule import TaskDataModule
from mammut.visualize import captioned_images

log = logging.getLogger(__name__)

GROUPINGS = ("question_type", "answer_type")


class VQADataModule(TaskDataModule):
    """Questions about images in VQAv2 format: the demo world, VQAv2 itself, or your own files."""

    def __init__(
        self,
        root: str = "data/demo",
        tokenizer: str = "tokenizer.json",
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
        image_size: int | None = None,
        context_length: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 250,
        num_workers: int = 2,
        skip_bad_samples: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            root: folder that the relative paths below are resolved against.
            tokenizer: the tokenizer.json the model was pretrained with.
            train_questions: VQAv2 questions JSON; ``*_annotations`` its answers, ``*_images`` the image folder.
            image_pattern: an image's file name from its id, e.g. ``COCO_train2014_{image_id:012d}.jpg``.
            predict_images: image files to ask about with ``mammut predict``.
            predict_questions: one question per image, or one question for all of them.
            image_size: side of the square model input; by default the model's ``architecture.image_size``.
            context_length: tokens of question and answer together; by default the model's.
            batch_size: training questions per step and device.
            eval_batch_size: questions per evaluation step.
            num_workers: DataLoader worker processes.
            skip_bad_samples: skip (and count) unreadable images, empty questions and questions
                without answers instead of failing.
            seed: shuffling and the per-question answer draw; a resumed run repeats them exactly.
        """
        super().__init__(root, tokenizer, image_size, context_length)
        self.save_hyperparameters()

    def records(self, split: str) -> list[VQARecord]:
        if split not in self.datasets:
            self._load(split)
        return self.datasets[split].records

    def _load(self, split: str) -> None:
        h = self.hparams
        questions, annotations, images = h[f"{split}_questions"], h[f"{split}_annotations"], h[f"{split}_images"]
        if questions is None:
            raise ValueError(f"data.{split}_questions is not set")
        if split == "train" and not annotations:
            raise ValueError("training needs answers: set data.train_annotations")
        records, skipped = read_vqa(self.path(questions), annotations and self.path(annotations),
                                    self.path(images), h.image_pattern, h.skip_bad_samples)
        self.records_skipped[split] = skipped
        if skipped:
            log.warning("%s: skipped %d bad questions", questions, skipped)
        if not records:
            raise ValueError(f"{self.path(questions)}: no usable questions")
        self._add_dataset(split, records, train=split == "train")

    def _add_dataset(self, split: str, records: list[VQARecord], train: bool) -> None:
        if self.image_size is None:
            self.shape_for_model()
        self.datasets[split] = VQADataset(records, self.tokenizer, image_transform(self.image_size, train=train),
                                          self.context_length, train=train, seed=self.hparams.seed,
                                          skip_bad_samples=self.hparams.skip_bad_samples)

    def setup(self, stage: str) -> None:
        self.shape_for_model()
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": []}[stage]
        for split in needed:
            self.records(split)
        if stage == "predict":
            self._add_dataset("predict", self._predict_records(), train=False)

    def _predict_records(self) -> list[VQARecord]:
        images, questions = self.hparams.predict_images or [], self.hparams.predict_questions or []
        if not images or not questions:
            raise ValueError("nothing to answer: set --data.predict_images=[a.jpg, ...] and "
                             "--data.predict_questions=['what color is the star?', ...]")
        if len(questions) == 1:
            questions = questions * len(images)
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} predict_images but {len(questions)} predict_questions: "
                             "give one question per image, or one for all")
        return [VQARecord(question_id=i, image_id=-1, path=Path(image), question=question.strip())
                for i, (image, question) in enumerate(zip(images, questions))]

    def question_groups(self, split: str) -> dict[str, dict[int, str]]:
        """{"question_type": {question id: type}, "answer_type": {...}} of a split."""
        return {g: {r.question_id: getattr(r, g) for r in self.records(split)} for g in GROUPINGS}

    def majority_baseline(self, split: str) -> dict[int, float]:
        """VQA accuracy per question of the most frequent training answer of its question type."""
        majority = majority_answers((r.question_type, r.answers) for r in self.records("train"))
        overall = most_frequent_answer(a for r in self.records("train") for a in r.answers)
        return {r.question_id: vqa_accuracy(majority.get(r.question_type, overall), r.answers)
                for r in self.records(split)}

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.datasets["train"], collate_vqa)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"], collate_vqa)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["test"], collate_vqa)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["predict"], collate_vqa)


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


class VQAModule(MammutModule):
    """VQA with generated answers; optionally eP-ALM-style, with a trained prefix on a frozen model."""

    def __init__(
        self,
        peft: PrefixConfig | None = None,
        label_smoothing: float = 0.0,
        num_logged_samples: int = 16,
        **kwargs,
    ):
        """
        Args:
            peft: add a learned prefix (prompt tokens and projected visual tokens of chosen
                encoder layers, see ``mammut.model.prefix``) in front of the question. Freeze
                the model with ``freeze: ["model.*"]`` to train the prefix alone.
            label_smoothing: of the answer cross-entropy.
            num_logged_samples: validation images drawn with question, answer and ground truth.
            **kwargs: the shared settings of ``MammutModule`` (architecture, lr, init_from, freeze, ...).
        """
        super().__init__(**kwargs)
        self.metrics = torch.nn.ModuleDict({"val": VQAAccuracy(), "test": VQAAccuracy()})
        self._logged_samples: tuple[Tensor, list[str]] | None = None

    def add_task_modules(self) -> None:
        peft = self.hparams.get("peft")
        if isinstance(peft, dict):  # LightningCLI stores the arguments as given, not instantiated
            peft = PrefixConfig(**peft)
        a = self.architecture
        self.prefix = VisualPrefix(peft, a.vision_width, a.text_width) if peft else None

    # --------------------------------------------------------------- forward
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Visual tokens, and the PEFT prefix if there is one."""
        frozen = not any(p.requires_grad for p in self.model.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if self.prefix is None:
                return self.model.encode_image(images), None
            visual_tokens, layer_tokens = self.model.encode_image_with_layers(images, self.prefix.config.visual_layers)
        return visual_tokens, self.prefix(layer_tokens)

    def training_step(self, batch: VQABatch, batch_idx: int):
        self.count_skipped(batch.num_skipped)
        self.count_truncated(batch.truncated)
        if len(batch) == 0 and self.trainer.world_size == 1:
            return None  # every sample of this batch was bad: skip the step
        # With several ranks a rank whose samples were all bad still runs the model, on zero
        # rows, so that the others' collectives do not wait for it; it adds zero to the loss.
        images, tokens = (batch.images, batch.tokens) if len(batch) else self.empty_inputs()
        visual_tokens, prefix = self.encode(images)
        logits = self.model.caption_logits(tokens[:, :-1], visual_tokens, prefix)
        if len(batch):
            loss = answer_loss(logits, tokens, batch.answer_start, self.architecture.pad_id,
                               self.hparams.label_smoothing)
        else:
            loss = logits.sum()  # zero, and joined to the graph
        self.check_finite(loss, {"answer": loss})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def answer(self, batch: VQABatch) -> list[str]:
        """Generated answers to the batch's questions (``batch.tokens`` holds the prompts)."""
        visual_tokens, prefix = self.encode(batch.images)
        generated = generate_after_prompts(self.model, visual_tokens, batch.tokens, batch.answer_start,
                                           self.generation, prefix)
        return self.trainer.datamodule.tokenizer.decode_batch(generated)

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: VQABatch, batch_idx: int, stage: str) -> None:
        self.count_skipped(batch.num_skipped)
        self.count_truncated(batch.truncated)
        if len(batch) == 0:
            return
        predictions = self.answer(batch)
        self.metrics[stage].update(predictions, batch.answers, batch.question_ids)
        if batch_idx == 0:
            n = self.hparams.num_logged_samples
            texts = [f"Q: {q} A: {p} (truth: {most_frequent_answer(a)})"
                     for q, p, a in zip(batch.questions[:n], predictions[:n], batch.answers[:n])]
            self._logged_samples = (denormalize(batch.images[:n]), texts)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        metric = self.metrics[stage]
        if self.trainer.sanity_checking:
            metric.reset()
            return
        scores = metric.compute()
        metric.reset()
        if not scores:
            return
        datamodule = self.trainer.datamodule
        groups = datamodule.question_groups(stage)
        model = accuracy_breakdown(scores, groups)
        baseline_scores = datamodule.majority_baseline(stage)
        baseline = accuracy_breakdown({q: baseline_scores[q] for q in scores}, groups)
        self.log_dict({f"{stage}/vqa/{name}": value for name, value in model.items()})
        self.log_dict({f"{stage}_baseline/vqa/{name}": value for name, value in baseline.items()})
        rows = [f"{'VQA accuracy':<28}{'model':>8}{'majority':>10}{'questions':>11}"]
        counts = Counter(f"{grouping}/{of_question[q]}" for grouping, of_question in groups.items() for q in scores)
        for name, value in model.items():
            rows.append(f"{name:<28}{value:>8.4f}{baseline[name]:>10.4f}{counts.get(name, len(scores)):>11}")
        if self.trainer.is_global_zero:
            print(f"\n{stage} (epoch {self.current_epoch}, step {self.global_step}):\n" + "\n".join(rows), flush=True)
        self._log_samples(stage)

    def _log_samples(self, stage: str) -> None:
        if self._logged_samples is None or self.logger is None:
            return
        images, texts = self._logged_samples
        self._logged_samples = None
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_images"):
            experiment.add_images(f"{stage}/answers", captioned_images(images, texts), self.global_step)
            experiment.add_text(f"{stage}/answers", "\n\n".join(texts), self.global_step)

    # ------------------------------------------------------------- prediction
    def predict_step(self, batch: VQABatch, batch_idx: int) -> list[dict]:
        records = self.trainer.datamodule.datasets["predict"].records
        answers = self.answer(batch)
        results = [{"image": str(records[q].path), "question": records[q].question, "answer": a}
                   for q, a in zip(batch.question_ids.tolist(), answers)]
        if self.trainer.is_global_zero:
            for result in results:
                print(f"{result['image']}\t{result['question']}\t{result['answer']}", flush=True)
        return results
