"""Boxes in COCO instances or LVIS v1 format, for detection."""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from pathlib import Path

from PIL import Image
from torch.utils.data import DataLoader

from mammut.data.box_transforms import DetectionTransform
from mammut.data.caption_files import read_captions
from mammut.data.caption_queries import image_queries
from mammut.data.detection_dataset import DetectionDataset, collate_detection
from mammut.data.instances import Category, DetectionRecord, read_instances
from mammut.data.json_records import reject
from mammut.data.tokenizer import words_in_pieces
from mammut.metrics.detection import class_prior_detections
from mammut.tasks.datamodule import TaskDataModule
from mammut.tasks.detection.task import DetectionInputs, class_name

log = logging.getLogger(__name__)


class DetectionDataModule(TaskDataModule):
    """Boxes in COCO instances or LVIS v1 format: the demo world, COCO, LVIS, or your own files."""

    collate_train = collate_eval = staticmethod(collate_detection)

    def __init__(
        self,
        train_annotations: str = "annotations/instances_train.json",
        train_images: str = "images/train",
        val_annotations: str = "annotations/instances_val.json",
        val_images: str = "images/val",
        test_annotations: str | None = "annotations/instances_test.json",
        test_images: str | None = "images/test",
        predict_images: list[str] | None = None,
        predict_words: list[str] | None = None,
        pseudo_label_captions: str | None = None,
        pseudo_label_images: str | None = None,
        query_words: int = 3,
        max_queries: int = 300,
        flip: bool = True,
        scale_range: tuple[float, float] = (0.6, 1.0),
        batch_size: int = 64,
        eval_batch_size: int = 200,
        **kwargs,
    ):
        """
        Args:
            train_annotations: COCO instances or LVIS v1 JSON, relative to ``root``; ``*_images``
                the folder of its images (found by ``file_name``, or for LVIS by ``coco_url``:
                ``<images>/val2017/000000397133.jpg``).
            predict_images: image files to detect in with ``mammut predict``.
            predict_words: the class names to look for in them, any words at all.
            pseudo_label_captions: instead, a caption file (COCO captions or Karpathy, relative
                to ``root``) whose images ``mammut predict`` pseudo-labels, each with the queries
                its captions give (``mammut.data.caption_queries``), into ``pseudo_labels.json``
                in the run's folder; ``pseudo_label_images`` is the folder of its images.
            query_words: the longest query taken from a caption, in words ("small red hexagon").
            max_queries: queries per image at most (OWL-ST's 300), the first found kept.
            flip: training images are flipped left to right at random, boxes with them.
            scale_range: scale jitter: training takes a random crop of this fraction of each side,
                resized to the input size; boxes are clipped to it (and dropped, counted, if
                nothing is left of them).
            batch_size: training images per step and device.
            eval_batch_size: images per evaluation step.
            **kwargs: those of ``TaskDataModule``: root, tokenizer, image_size, context_length
                (of the class prompts), num_workers, skip_bad_samples, seed.
        """
        super().__init__(**kwargs)
        self.save_arguments(locals())
        self.categories: dict[str, list[Category]] = {}
        self.ground_truth: dict[str, Path] = {}
        self.image_queries: dict[int, list[int]] = {}  # pseudo-labelling: image id -> its queries' indices
        self.caption_images: list[dict] = []  # pseudo-labelling: the caption set's COCO image entries

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "predict":
            captioned = self.hparams.pseudo_label_captions is not None
            self.records["predict"] = self._caption_set_records() if captioned else self._predict_records()

    def read_split(self, split: str) -> tuple[list[DetectionRecord], int, Path]:
        h = self.hparams
        annotations, images = h[f"{split}_annotations"], h[f"{split}_images"]
        if annotations is None:
            raise ValueError(f"data.{split}_annotations is not set")
        instances = read_instances(self.path(annotations), self.path(images), h.skip_bad_samples)
        self.categories[split], self.ground_truth[split] = instances.categories, instances.file
        return instances.records, instances.skipped, instances.file

    def _predict_records(self) -> list[DetectionRecord]:
        images, words = self.hparams.predict_images or [], self.hparams.predict_words or []
        if not images or not words:
            raise ValueError("nothing to detect: set --data.predict_images=[...] and --data.predict_words=[...]")
        self.categories["predict"] = [Category(id=k + 1, name=word) for k, word in enumerate(words)]
        in_pieces = words_in_pieces(self.tokenizer, [class_name(c) for c in self.categories["predict"]])
        if in_pieces:  # text the tokenizer never saw whole, so training never taught the model these words
            log.warning("data.predict_words: %s %s split into pieces by the tokenizer %s, whose training text never "
                        "held them whole: the model knows them only as fragments, so its detections of them are "
                        "unreliable", ", ".join(
                            f"{word!r} ({' '.join(pieces)})" for word, pieces in in_pieces.items()),
                        "is" if len(in_pieces) == 1 else "are", self.path(self.hparams.tokenizer))
        records = []
        for index, image in enumerate(images):
            width, height = image_size(Path(image), skip_bad_samples=False)
            records.append(DetectionRecord(image_id=index, path=Path(image), width=width, height=height, boxes=(),
                                           category_ids=()))
        return records

    def _caption_set_records(self) -> list[DetectionRecord]:
        """The images of ``pseudo_label_captions``, each with the queries of its captions; the
        categories of the run are every query of the set."""
        h = self.hparams
        if h.pseudo_label_images is None:
            raise ValueError("data.pseudo_label_captions needs data.pseudo_label_images, the folder of its images")
        images = self.path(h.pseudo_label_images)
        captioned, skipped = read_captions(self.path(h.pseudo_label_captions), images, "train", h.skip_bad_samples)
        self.records_skipped["predict"] = skipped
        queries = {r.image_id: image_queries(r.captions, h.query_words)[:h.max_queries] for r in captioned}
        names = sorted(set().union(*queries.values()))
        index = {name: k for k, name in enumerate(names)}
        self.categories["predict"] = [Category(id=k + 1, name=name) for k, name in enumerate(names)]
        self.image_queries = {image_id: [index[q] for q in found] for image_id, found in queries.items()}
        records, self.caption_images = [], []
        for record in captioned:
            width, height = image_size(record.path, h.skip_bad_samples)
            if width is None:
                self.records_skipped["predict"] += 1
                continue
            records.append(DetectionRecord(image_id=record.image_id, path=record.path, width=width, height=height,
                                           boxes=(), category_ids=()))
            self.caption_images.append({"id": record.image_id, "file_name": record.path.relative_to(images).as_posix(),
                                        "width": width, "height": height})
        log.info("pseudo-labelling %d images of %s with %d queries from their captions", len(records),
                 h.pseudo_label_captions, len(names))
        return records

    def build_dataset(self, split: str) -> DetectionDataset:
        h, train = self.hparams, split == "train"
        transform = DetectionTransform(self.image_size, train=train, flip=h.flip, scale_range=tuple(h.scale_range))
        return DetectionDataset(self.read_records(split), self.categories[split], transform, train=train,
                                seed=h.seed, skip_bad_samples=h.skip_bad_samples)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.dataset("predict"), collate_detection)

    def task_inputs(self, task: str) -> DetectionInputs:
        """Per split: its categories, its ground-truth file, whether it is LVIS-style (federated
        negatives), the class-prior baseline's detections; the predict inputs' file names."""
        inputs = DetectionInputs(self.input_shape, categories=self.categories, ground_truth=self.ground_truth,
                                 predict={r.image_id: str(r.path) for r in self.records.get("predict", [])},
                                 image_queries=self.image_queries, caption_images=self.caption_images)
        train = self.records.get("train")
        for split in ("val", "test"):
            records = self.records.get(split)
            if not records:
                continue
            inputs.federated[split] = any(r.neg_category_ids is not None for r in records)
            if train:
                counts = Counter(c for r in train for c in r.category_ids)
                prior = {c.id: counts.get(c.id, 0) for c in self.categories[split]}
                inputs.class_prior[split] = class_prior_detections(
                    prior, [(r.image_id, r.width, r.height) for r in records], median_box_size(train))
        return inputs


def image_size(path: Path, skip_bad_samples: bool) -> tuple[int | None, int | None]:
    """(width, height) of an image file, read from its header; (None, None) for a file that cannot
    be read under ``skip_bad_samples`` (logged), which otherwise raises naming it."""
    try:
        with Image.open(path) as opened:
            return opened.size
    except (OSError, ValueError) as error:
        reject(f"{path}: cannot read the image ({error})", skip_bad_samples)
        return None, None


def median_box_size(records: list[DetectionRecord]) -> tuple[float, float]:
    """The training boxes' median width and height, as fractions of their image's."""
    sizes = [(w / r.width, h / r.height) for r in records for _, _, w, h in r.boxes]
    if not sizes:
        return 0.25, 0.25
    return statistics.median(w for w, _ in sizes), statistics.median(h for _, h in sizes)
