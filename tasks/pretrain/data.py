"""Image-caption pairs for pretraining, in COCO captions or Karpathy format."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mammut.data import CaptionDataset, CaptionRecord, collate_eval, collate_train, image_transform, read_captions
from mammut.data.images import load_rgb_image
from mammut.tasks.datamodule import TaskDataModule
from mammut.tasks.pretrain.task import CaptionInputs, caption_inputs


class ImageTextDataModule(TaskDataModule):
    """Image-caption pairs in COCO captions format: the demo world, COCO, or your own files."""

    dataset_class = CaptionDataset
    collate_train, collate_eval = staticmethod(collate_train), staticmethod(collate_eval)

    def __init__(
        self,
        train_annotations: str = "annotations/captions_train.json",
        train_images: str = "images/train",
        val_annotations: str = "annotations/captions_val.json",
        val_images: str = "images/val",
        test_annotations: str | None = "annotations/captions_test.json",
        test_images: str | None = "images/test",
        annotation_format: str = "auto",
        predict_images: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 250,
        **kwargs,
    ):
        """
        Args:
            train_annotations: caption JSON of the training split (see ``annotation_format``),
                relative to ``root``; ``*_images`` are image folders.
            annotation_format: "coco" (a captions file per split), "karpathy" (one
                ``dataset_coco.json``-style file of every split, read for the split's images:
                train = "train" + "restval"), or "auto" to tell them apart by content.
            predict_images: image files to caption with ``mammut predict``.
            batch_size: training images per step and device. The contrastive batch is the
                batch of all devices together (embeddings are gathered); with
                ``trainer.accumulate_grad_batches`` it is still one step's, not the accumulated one.
            eval_batch_size: images per validation step.
            **kwargs: those of ``TaskDataModule``: root, tokenizer, image_size, context_length,
                num_workers, skip_bad_samples, seed.
        """
        super().__init__(**kwargs)
        self.save_arguments(locals())

    def read_split(self, split: str) -> tuple[list[CaptionRecord], int, Path]:
        h = self.hparams
        annotations, images = h[f"{split}_annotations"], h[f"{split}_images"]
        if annotations is None:
            raise ValueError(f"data.{split}_annotations is not set")
        records, skipped = read_captions(self.path(annotations), self.path(images), split, h.skip_bad_samples,
                                         h.annotation_format)
        return records, skipped, self.path(annotations)

    def task_inputs(self, task: str) -> CaptionInputs:
        """The training captions, whose most frequent one is the captioning baseline."""
        return caption_inputs(self.records, self.input_shape)

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
