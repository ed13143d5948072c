"""VQA with generated answers (MaMMUT, arXiv 2303.16839, Sec. 3.4 and 4.3).

``VQATask`` is the task on the shared model. The question is a prefix to the decoder's
generative pass and the answer is generated after it: there is no fixed answer vocabulary.
Training is teacher-forced and its loss covers the answer tokens only. Evaluation generates an
answer (greedy or beam search, ``generation``) and scores it with the official VQAv2 accuracy,
overall and per question and answer type, each beside the majority-answer baseline: the most
frequent training answer of the question's type. On clips it is video QA (``mammut.tasks.video``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mammut.data import VQABatch
from mammut.data.transforms import denormalize
from mammut.metrics.vqa import (VQAAccuracy, accuracy_breakdown, most_frequent_answer)
from mammut.model import Mammut, MammutConfig, PrefixConfig, VisualPrefix, generate_after_prompts
from mammut.task import Task, TaskContext, TaskInputs, TaskLoss, TaskReport

log = logging.getLogger(__name__)


@dataclass
class QuestionInputs(TaskInputs):
    """What ``VQATask`` needs from its data (questions about images or clips)."""

    answer_scoring: str = "vqa"  # a key of ``mammut.metrics.vqa.ANSWER_SCORING``
    # split -> grouping ("question_type", "answer_type") -> question id -> its group
    question_groups: dict[str, dict[str, dict[int, str]]] = field(default_factory=dict)
    # split -> question id -> the majority baseline's score on it
    majority_baseline: dict[str, dict[int, float]] = field(default_factory=dict)
    predict: dict[int, tuple[str, str]] = field(default_factory=dict)  # question id -> (input file, question)
    # training answer words the tokenizer spells in several tokens -> their pieces
    answer_words_in_pieces: dict[str, list[str]] = field(default_factory=dict)


IGNORED = -100  # the target of a question or padding position


def answer_targets(tokens: Tensor, answer_start: Tensor, pad_id: int) -> Tensor:
    """(B, T-1) targets of ``tokens[:, :-1]``: the next token where it is an answer token (or its
    eos), ``IGNORED`` at question and padding positions. answer_start: (B,) index in ``tokens`` of
    each first answer token."""
    targets = tokens[:, 1:].clone()
    target_position = torch.arange(1, tokens.shape[1], device=tokens.device)
    targets[(target_position[None, :] < answer_start[:, None]) | (targets == pad_id)] = IGNORED
    return targets


def answer_loss(logits: Tensor, tokens: Tensor, answer_start: Tensor, pad_id: int,
                label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the answer tokens (and their eos) only.

    logits: (B, T-1, V) predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``; answer_start: (B,)
    index in ``tokens`` of each first answer token. Question and padding positions are ignored.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), answer_targets(tokens, answer_start, pad_id).flatten(),
                           ignore_index=IGNORED, label_smoothing=label_smoothing)


class VQATask(Task):
    """VQA with generated answers; optionally eP-ALM-style, with a trained prefix on a frozen model."""

    inputs_type = QuestionInputs

    def __init__(self, peft: PrefixConfig | None = None, label_smoothing: float = 0.0, num_logged_samples: int = 16,
                 loss_chunk_tokens: int | None = None):
        """
        Args:
            peft: add a learned prefix (prompt tokens and projected visual tokens of chosen
                encoder layers, see ``mammut.model.prefix``) in front of the question. Freeze
                the model with ``freeze: ["model.*"]`` to train the prefix alone.
            label_smoothing: of the answer cross-entropy.
            num_logged_samples: validation images drawn with question, answer and ground truth.
            loss_chunk_tokens: compute the answer loss this many answer tokens at a time, never
                building the whole (batch, length, vocabulary) logits
                (``mammut.model.chunked_caption_loss``: the same loss and gradients); None: all at once.
        """
        super().__init__()
        # LightningCLI stores the arguments as given, not instantiated.
        self.peft = PrefixConfig(**peft) if isinstance(peft, dict) else peft
        self.label_smoothing, self.num_logged_samples = label_smoothing, num_logged_samples
        self.loss_chunk_tokens = loss_chunk_tokens
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
        for metric in self.metrics.values():
            metric.scoring = context.inputs.answer_scoring
        in_pieces = context.inputs.answer_words_in_pieces
        if self.prefix is not None and in_pieces:
            # Full fine-tuning and LoRA learn the pieces; a frozen decoder with a prefix alone has
            # to produce fragments in orders it never produced (docs/vqa.md).
            word, pieces = next(iter(in_pieces.items()))
            log.warning("%d answer words of the training split are several tokens of the tokenizer (e.g. %r: %s); "
                        "with the decoder frozen, a prefix alone hardly learns them: pretrain with a tokenizer "
                        "whose answer words are whole (python -m mammut.data.tokenizer --captions ... "
                        "--answers-only ... --answers ...).", len(in_pieces), word, pieces)

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
        # Text-conditioned fusion reads the question (the tokens before the answer), as in generation.
        if self.loss_chunk_tokens is not None:  # zero, joined to the graph, for an empty batch
            hidden = model.caption_hidden(batch.tokens[:, :-1], visual_tokens, prefix, batch.answer_start)
            loss = model.chunked_caption_loss(hidden, answer_targets(batch.tokens, batch.answer_start,
                                                                     model.config.pad_id),
                                              IGNORED, self.label_smoothing, self.loss_chunk_tokens)
            return TaskLoss(loss, {"answer_loss": loss})
        logits = model.caption_logits(batch.tokens[:, :-1], visual_tokens, prefix, batch.answer_start)
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
        groups = self.inputs.question_groups[stage]
        model = accuracy_breakdown(scores, groups)
        baseline_scores = self.inputs.majority_baseline.get(stage)
        baseline = accuracy_breakdown({q: baseline_scores[q] for q in scores}, groups) if baseline_scores else {}
        counts = Counter(f"{grouping}/{of_question[q]}" for grouping, of_question in groups.items() for q in scores)
        counts["accuracy"] = len(scores)
        return TaskReport(model, baseline, dict(counts), samples)

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
        self._samples.pop(stage, None)

    # ------------------------------------------------------------- prediction
    def predict(self, model: Mammut, batch: VQABatch) -> list[dict]:
        records = self.inputs.predict
        answers = self.answer(model, batch)
        return [{"image": records[q][0], "question": records[q][1], "answer": a}
                for q, a in zip(batch.question_ids.tolist(), answers)]
