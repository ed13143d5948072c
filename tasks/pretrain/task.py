"""Pretraining: contrastive and captioning losses trained jointly (MaMMUT, arXiv 2303.16839, Sec. 3.3).

``PretrainTask`` is the task on the shared model. Validation reports zero-shot retrieval
R@1/5/10 in both directions and CIDEr-D / BLEU-4 of greedy captions, each beside its baseline
computed from the same data: chance recall for retrieval, and the most frequent training
caption for captioning; and, when its data names classification sets, zero-shot classification
beside chance (``zero_shot.py``). On clips it is video captioning (``mammut.tasks.video``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from mammut.data.batch import ClassificationBatch, ImageCaptionsBatch, ImageTextBatch
from mammut.data.transforms import denormalize
from mammut.metrics import CaptionMetrics, RetrievalRecallAtK
from mammut.metrics.captioning import most_frequent_caption_baseline
from mammut.metrics.retrieval import chance_recall_at_k
from mammut.model import ContrastiveLoss, Mammut, caption_loss, generate
from mammut.task import Task, TaskContext, TaskInputs, TaskLoss, TaskReport
from mammut.tasks.pretrain.zero_shot import ZeroShotClasses, ZeroShotClassification


@dataclass
class CaptionInputs(TaskInputs):
    """What ``PretrainTask`` needs from its data (images or clips with captions)."""

    train_captions: list[str] = field(default_factory=list)  # the captioning baseline: the most frequent
    # Zero-shot classification sets evaluated in this stage, by name (none: no such evaluation).
    zero_shot: dict[str, ZeroShotClasses] = field(default_factory=dict)


def caption_inputs(records: dict[str, list], input_shape: tuple[int, ...]) -> CaptionInputs:
    return CaptionInputs(input_shape, [c for record in records.get("train", []) for c in record.captions])


class PretrainTask(Task):
    """Contrastive loss on the two embeddings plus captioning loss (Sec. 3.3); zero-shot
    retrieval and greedy captions in evaluation."""

    inputs_type = CaptionInputs

    def __init__(
        self,
        contrastive_weight: float = 1.0,
        caption_weight: float = 1.0,
        contrastive_loss: str = "infonce",
        focal_gamma: float = 2.0,
        local_loss: bool = False,
        label_smoothing: float = 0.0,
        num_logged_images: int = 16,
        loss_chunk_tokens: int | None = None,
    ):
        """
        Args:
            contrastive_weight: weight of the contrastive loss in the sum.
            caption_weight: weight of the captioning loss in the sum.
            contrastive_loss: "infonce" (CLIP) or "focal" (RO-ViT's focal contrastive loss).
            focal_gamma: the focusing exponent of the focal loss.
            local_loss: under data parallelism, compute only this rank's rows of the logits
                (less memory, the same gradients); see ``mammut.model.ContrastiveLoss``.
            label_smoothing: of the captioning cross-entropy.
            num_logged_images: validation images drawn with their generated captions.
            loss_chunk_tokens: compute the captioning loss this many caption tokens at a time,
                never building the whole (batch, length, vocabulary) logits
                (``mammut.model.chunked_caption_loss``: the same loss and gradients); None: all at once.
        """
        super().__init__()
        self.contrastive_weight, self.caption_weight = contrastive_weight, caption_weight
        self.label_smoothing, self.num_logged_images = label_smoothing, num_logged_images
        self.loss_chunk_tokens = loss_chunk_tokens
        self.contrastive_loss = ContrastiveLoss(contrastive_loss, focal_gamma, local_loss)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": metric
            for stage in ("val", "test")
            for name, metric in (("retrieval", RetrievalRecallAtK()), ("captioning", CaptionMetrics()))
        })
        self.zero_shot = ZeroShotClassification()
        self._samples: dict[str, tuple[Tensor, list[str]]] = {}
        self._eval_ids: list[Tensor] = []
        self._eval_caption_image_ids: list[Tensor] = []
        self._eval_references: list[list[str]] = []

    def connect(self, context: TaskContext) -> None:
        super().connect(context)
        self.zero_shot.connect(context.inputs.zero_shot)

    # --------------------------------------------------------------- training
    def empty_batch(self, device) -> ImageTextBatch:
        c = self.context.architecture
        return ImageTextBatch(images=self.empty_inputs(device),
                              tokens=torch.zeros(0, c.context_length, dtype=torch.long, device=device),
                              image_ids=torch.zeros(0, dtype=torch.long, device=device))

    def loss(self, model: Mammut, batch: ImageTextBatch) -> TaskLoss:
        out = model(batch.images, batch.tokens, caption_logits=self.loss_chunk_tokens is None)
        contrastive = self.contrastive_loss(out.image_embedding, out.text_embedding, out.logit_scale)
        if self.loss_chunk_tokens is not None:  # zero, joined to the graph, for an empty batch
            captioning = model.chunked_caption_loss(out.caption_hidden, batch.tokens[:, 1:], model.config.pad_id,
                                                    self.label_smoothing, self.loss_chunk_tokens)
        elif len(batch):
            captioning = caption_loss(out.caption_logits, batch.tokens[:, 1:], model.config.pad_id,
                                      self.label_smoothing)
        else:
            captioning = out.caption_logits.sum()  # zero, and joined to the graph
        total = self.contrastive_weight * contrastive + self.caption_weight * captioning
        return TaskLoss(total, {"contrastive_loss": contrastive, "caption_loss": captioning,
                                "temperature": 1.0 / out.logit_scale.detach()})

    # ------------------------------------------------------------- evaluation
    def evaluate(self, model: Mammut, batch: ImageCaptionsBatch | ClassificationBatch, stage: str,
                 batch_idx: int) -> None:
        if isinstance(batch, ClassificationBatch):
            self.zero_shot.evaluate(model, batch, stage)
            return
        visual_tokens = model.encode_image(batch.images)
        self.metrics[f"{stage}_retrieval"].update(
            model.image_embedding(visual_tokens), batch.image_ids,
            model.text_embedding(batch.caption_tokens), batch.caption_image_ids)
        captions = self.tokenizer.decode_batch(generate(model, visual_tokens, config=self.context.generation))
        self.metrics[f"{stage}_captioning"].update(captions, batch.references, batch.image_ids.tolist())
        self._eval_ids.append(batch.image_ids.cpu())
        self._eval_caption_image_ids.append(batch.caption_image_ids.cpu())
        self._eval_references.extend(batch.references)
        if batch_idx == 0:
            n = self.num_logged_images
            self._samples[stage] = (denormalize(batch.images[:n]), captions[:n])

    def report(self, stage: str) -> TaskReport:
        scores, baselines = {}, {}
        if self._eval_ids:  # captions were evaluated (a zero-shot-only evaluation has none)
            scores = {**self.metrics[f"{stage}_retrieval"].compute(), **self.metrics[f"{stage}_captioning"].compute()}
            image_ids, caption_image_ids, references = self._whole_eval_set()
            baselines = chance_recall_at_k(image_ids, caption_image_ids)
            baselines.update(most_frequent_caption_baseline(self.inputs.train_captions, references).scores)
            scores["retrieval/mean_R@1"] = (scores["image_to_text/R@1"] + scores["text_to_image/R@1"]) / 2
        zero_shot_scores, zero_shot_chance, counts = self.zero_shot.report(stage)
        samples = self._samples.pop(stage, None)
        self.reset(stage)
        return TaskReport({name: float(value) for name, value in {**scores, **zero_shot_scores}.items()},
                          {name: float(value) for name, value in {**baselines, **zero_shot_chance}.items()},
                          counts=counts, samples=samples)

    def _whole_eval_set(self) -> tuple[Tensor, Tensor, list[list[str]]]:
        """Image ids, the image id of each caption, and the references of the whole evaluation
        set: every rank's part, each image once (a distributed sampler repeats a few images to
        give every rank the same number)."""
        part = (torch.cat(self._eval_ids).tolist() if self._eval_ids else [],
                torch.cat(self._eval_caption_image_ids).tolist() if self._eval_caption_image_ids else [],
                self._eval_references)
        parts = [part]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, part)
        num_captions, references = {}, {}
        for image_ids, caption_image_ids, image_references in parts:
            counts = Counter(caption_image_ids)
            for image_id, reference in zip(image_ids, image_references):
                num_captions[image_id], references[image_id] = counts[image_id], reference
        caption_image_ids = [image_id for image_id, n in num_captions.items() for _ in range(n)]
        return torch.tensor(list(num_captions)), torch.tensor(caption_image_ids), list(references.values())

    def reset(self, stage: str) -> None:
        self.zero_shot.reset(stage)
        self.metrics[f"{stage}_retrieval"].reset()
        self.metrics[f"{stage}_captioning"].reset()
        self._eval_ids.clear()
        self._eval_caption_image_ids.clear()
        self._eval_references.clear()
        self._samples.pop(stage, None)

    # ------------------------------------------------------------- prediction
    def predict(self, model: Mammut, batch: dict) -> list[dict]:
        visual_tokens = model.encode_image(batch["image"])
        captions = self.tokenizer.decode_batch(generate(model, visual_tokens, config=self.context.generation))
        return [{"path": p, "caption": c} for p, c in zip(batch["path"], captions)]
