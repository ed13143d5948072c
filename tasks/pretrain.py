"""Pretraining: contrastive and captioning losses trained jointly (MaMMUT, arXiv 2303.16839, Sec. 3.3).

    mammut fit --config configs/pretrain.yaml

Validation reports zero-shot retrieval R@1/5/10 in both directions and CIDEr-D / BLEU-4 of
greedy captions, each beside its baseline computed from the same data: chance recall for
retrieval, and the most frequent training caption for captioning.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mammut.data import CaptionDataset, CaptionTokenizer, collate_eval, collate_train, image_transform, read_captions
from mammut.data.batch import ImageCaptionsBatch, ImageTextBatch
from mammut.data.images import load_rgb_image
from mammut.data.transforms import denormalize
from mammut.metrics import CaptionMetrics, RetrievalRecallAtK
from mammut.metrics.captioning import most_frequent_caption_baseline
from mammut.metrics.retrieval import chance_recall_at_k
from mammut.model import ContrastiveLoss, caption_loss, generate
from mammut.module import MammutModule
from mammut.tasks.datamodule import TaskDataModule
from mammut.visualize import captioned_images

log = logging.getLogger(__name__)


class ImageTextDataModule(TaskDataModule):
    """Image-caption pairs in COCO captions format: the demo world, COCO, or your own files."""

    def __init__(
        self,
        root: str = "data/demo",
        tokenizer: str = "tokenizer.json",
        train_annotations: str = "annotations/captions_train.json",
        train_images: str = "images/train",
        val_annotations: str = "annotations/captions_val.json",
        val_images: str = "images/val",
        test_annotations: str | None = "annotations/captions_test.json",
        test_images: str | None = "images/test",
        predict_images: list[str] | None = None,
        image_size: int | None = None,
        context_length: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 250,
        num_workers: int = 2,
        skip_bad_samples: bool = False,
        seed: int = 0,
        annotation_format: str = "auto",
    ):
        """
        Args:
            root: folder that the relative paths below are resolved against.
            tokenizer: a tokenizer.json (trained by ``python -m mammut.data.tokenizer`` or your own).
            train_annotations: caption JSON of the training split (see ``annotation_format``);
                ``*_images`` are image folders.
            predict_images: image files to caption with ``mammut predict``.
            image_size: side of the square model input; by default the model's ``architecture.image_size``.
            context_length: tokens per caption, bos and eos included; by default the model's.
            batch_size: training images per step and device. The contrastive batch is the
                batch of all devices together (embeddings are gathered); with
                ``trainer.accumulate_grad_batches`` it is still one step's, not the accumulated one.
            eval_batch_size: images per validation step.
            num_workers: DataLoader worker processes.
            skip_bad_samples: skip (and count) unreadable images and empty captions instead of failing.
            seed: shuffling and per-sample caption choice; a resumed run repeats them exactly.
            annotation_format: "coco" (a captions file per split), "karpathy" (one
                ``dataset_coco.json``-style file of every split, read for the split's images:
                train = "train" + "restval"), or "auto" to tell them apart by content.
        """
        super().__init__(root, tokenizer, image_size, context_length)
        self.save_hyperparameters()

    def _dataset(self, split: str, train: bool) -> CaptionDataset:
        h = self.hparams
        annotations, images = h[f"{split}_annotations"], h[f"{split}_images"]
        records, skipped = read_captions(self.path(annotations), self.path(images), split, h.skip_bad_samples,
                                         h.annotation_format)
        self.records_skipped[split] = skipped
        if skipped:
            log.warning("%s: skipped %d bad records", annotations, skipped)
        if not records:
            raise ValueError(f"{self.path(annotations)}: no usable image-caption records")
        return CaptionDataset(records, self.tokenizer, image_transform(self.image_size, train=train),
                              self.context_length, train=train, seed=h.seed, skip_bad_samples=h.skip_bad_samples)

    def setup(self, stage: str) -> None:
        self.shape_for_model()
        if stage == "fit" and "train" not in self.datasets:
            self.datasets["train"] = self._dataset("train", train=True)
        if stage in ("fit", "validate") and "val" not in self.datasets:
            self.datasets["val"] = self._dataset("val", train=False)
        if stage == "test" and "test" not in self.datasets:
            self.datasets["test"] = self._dataset("test", train=False)

    def train_captions(self) -> list[str]:
        if "train" not in self.datasets:
            self.shape_for_model()
            self.datasets["train"] = self._dataset("train", train=True)
        return [c for record in self.datasets["train"].records for c in record.captions]

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.datasets["train"], collate_train)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"], collate_eval)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["test"], collate_eval)

    def predict_dataloader(self) -> DataLoader:
        paths = self.hparams.predict_images
        if not paths:
            raise ValueError("nothing to predict: set --data.predict_images=[path.jpg, ...]")
        return DataLoader(ImageFiles(paths, image_transform(self.image_size, train=False)),
                          batch_size=self.hparams.eval_batch_size)


class ImageFiles(torch.utils.data.Dataset):
    """Image files given by path, for prediction."""

    def __init__(self, paths: list[str], transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(load_rgb_image(self.paths[index])), "path": self.paths[index]}


class PretrainModule(MammutModule):
    """MaMMUT pretraining: contrastive loss on the two embeddings plus captioning loss."""

    def __init__(
        self,
        contrastive_weight: float = 1.0,
        caption_weight: float = 1.0,
        contrastive_loss: str = "infonce",
        focal_gamma: float = 2.0,
        local_loss: bool = False,
        label_smoothing: float = 0.0,
        num_logged_images: int = 16,
        **kwargs,
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
            **kwargs: the shared settings of ``MammutModule`` (architecture, lr, ...).
        """
        super().__init__(**kwargs)
        self.contrastive_loss = ContrastiveLoss(contrastive_loss, focal_gamma, local_loss)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": metric
            for stage in ("val", "test")
            for name, metric in (("retrieval", RetrievalRecallAtK()), ("captioning", CaptionMetrics()))
        })
        self._logged_samples: tuple[torch.Tensor, list[str]] | None = None
        self._eval_ids: list[torch.Tensor] = []
        self._eval_caption_image_ids: list[torch.Tensor] = []
        self._eval_references: list[list[str]] = []

    # --------------------------------------------------------------- training
    def training_step(self, batch: ImageTextBatch, batch_idx: int):
        self.count_skipped(batch.num_skipped)
        self.count_truncated(batch.truncated)
        if len(batch) == 0 and self.trainer.world_size == 1:
            return None  # every sample of this batch was bad: skip the step
        # With several ranks a rank whose samples were all bad still runs the model, on zero
        # rows, so that the others' collectives do not wait for it; it adds zero to the loss.
        images, tokens = (batch.images, batch.tokens) if len(batch) else self.empty_inputs()
        out = self.model(images, tokens)
        contrastive = self.contrastive_loss(out.image_embedding, out.text_embedding, out.logit_scale)
        if len(batch):
            captioning = caption_loss(out.caption_logits, tokens[:, 1:], self.architecture.pad_id,
                                      self.hparams.label_smoothing)
        else:
            captioning = out.caption_logits.sum()  # zero, and joined to the graph
        loss = self.hparams.contrastive_weight * contrastive + self.hparams.caption_weight * captioning
        self.check_finite(loss, {"contrastive": contrastive, "caption": captioning})
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/contrastive_loss": contrastive, "train/caption_loss": captioning,
                       "train/temperature": 1.0 / out.logit_scale})
        return loss

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch: ImageCaptionsBatch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: ImageCaptionsBatch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: ImageCaptionsBatch, batch_idx: int, stage: str) -> None:
        self.count_skipped(batch.num_skipped)
        self.count_truncated(batch.truncated)
        if len(batch) == 0:
            return
        visual_tokens = self.model.encode_image(batch.images)
        self.metrics[f"{stage}_retrieval"].update(
            self.model.image_embedding(visual_tokens), batch.image_ids,
            self.model.text_embedding(batch.caption_tokens), batch.caption_image_ids)
        captions = self.tokenizer.decode_batch(generate(self.model, visual_tokens, config=self.generation))
        self.metrics[f"{stage}_captioning"].update(captions, batch.references, batch.image_ids.tolist())
        self._eval_ids.append(batch.image_ids.cpu())
        self._eval_caption_image_ids.append(batch.caption_image_ids.cpu())
        self._eval_references.extend(batch.references)
        if batch_idx == 0:
            n = self.hparams.num_logged_images
            self._logged_samples = (denormalize(batch.images[:n]), captions[:n])

    @property
    def tokenizer(self) -> CaptionTokenizer:
        return self.trainer.datamodule.tokenizer

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            self._reset_eval(stage)
            return
        scores = {**self.metrics[f"{stage}_retrieval"].compute(), **self.metrics[f"{stage}_captioning"].compute()}
        image_ids, caption_image_ids, references = self._whole_eval_set()
        baselines = chance_recall_at_k(image_ids, caption_image_ids)
        baselines.update(most_frequent_caption_baseline(self.trainer.datamodule.train_captions(), references).scores)
        scores["retrieval/mean_R@1"] = (scores["image_to_text/R@1"] + scores["text_to_image/R@1"]) / 2
        # Every rank holds the same values (the metrics and the baselines see the whole set);
        # sync_dist only confirms it, and lets checkpoint monitors read them on every rank.
        self.log_dict({f"{stage}/{name}": value for name, value in scores.items()}, sync_dist=True)
        self.log_dict({f"{stage}_baseline/{name}": float(value) for name, value in baselines.items()}, sync_dist=True)
        rows = [f"{'metric':<22}{'model':>10}{'baseline':>10}"]
        for name, value in scores.items():
            base = baselines.get(name)
            rows.append(f"{name:<22}{float(value):>10.4f}{'' if base is None else f'{base:>10.4f}'}")
        if self.trainer.is_global_zero:
            print(f"\n{stage} (epoch {self.current_epoch}, step {self.global_step}):\n" + "\n".join(rows), flush=True)
        self._log_samples(stage)
        self._reset_eval(stage)

    def _whole_eval_set(self) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
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

    def _log_samples(self, stage: str) -> None:
        if self._logged_samples is None or self.logger is None:
            return
        images, captions = self._logged_samples
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_images"):
            experiment.add_images(f"{stage}/generated_captions", captioned_images(images, captions), self.global_step)
            experiment.add_text(f"{stage}/generated_captions", "\n\n".join(captions), self.global_step)

    def _reset_eval(self, stage: str) -> None:
        self.metrics[f"{stage}_retrieval"].reset()
        self.metrics[f"{stage}_captioning"].reset()
        self._eval_ids.clear()
        self._eval_caption_image_ids.clear()
        self._eval_references.clear()
        self._logged_samples = None

    # ------------------------------------------------------------- prediction
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        visual_tokens = self.model.encode_image(batch["image"])
        captions = self.tokenizer.decode_batch(generate(self.model, visual_tokens, config=self.generation))
        if self.trainer.is_global_zero:
            for path, caption in zip(batch["path"], captions):
                print(f"{path}\t{caption}", flush=True)
        return [{"path": p, "caption": c} for p, c in zip(batch["path"], captions)]
