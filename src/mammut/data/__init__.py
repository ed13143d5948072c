"""Data: readers of public formats, image decoding, the caption tokenizer, transforms,
datasets and batch types. Knows nothing of models or Lightning.

Names are imported on first use, so ``import mammut.data`` stays cheap and
``python -m mammut.data.tokenizer`` runs without its module being imported twice.
The ``demo`` subpackage (the demo-world generator) is imported only when asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DataFormatError": "errors",
    "BadSampleError": "errors",
    "CaptionTokenizer": "tokenizer",
    "DEFAULT_SPECIAL_TOKENS": "tokenizer",
    "CaptionRecord": "coco",
    "read_coco_captions": "coco",
    "read_karpathy_captions": "karpathy",
    "read_captions": "caption_files",
    "CAPTION_FORMATS": "caption_files",
    "load_rgb_image": "images",
    "image_transform": "transforms",
    "CLIP_MEAN": "transforms",
    "CLIP_STD": "transforms",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "ImageTextBatch": "batch",
    "ImageCaptionsBatch": "batch",
    "CaptionDataset": "captions_dataset",
    "TrainSample": "captions_dataset",
    "EvalSample": "captions_dataset",
    "collate_train": "captions_dataset",
    "collate_eval": "captions_dataset",
    "ResumableRandomSampler": "sampling",
    "VQARecord": "vqa",
    "read_vqa": "vqa",
    "VQABatch": "batch",
    "VQADataset": "vqa_dataset",
    "VQASample": "vqa_dataset",
    "collate_vqa": "vqa_dataset",
    "Category": "instances",
    "DetectionRecord": "instances",
    "Instances": "instances",
    "read_instances": "instances",
    "BoxedImage": "box_transforms",
    "DetectionTransform": "box_transforms",
    "DetectionBatch": "batch",
    "DetectionDataset": "detection_dataset",
    "DetectionSample": "detection_dataset",
    "collate_detection": "detection_dataset",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from mammut.data.batch import DetectionBatch, ImageCaptionsBatch, ImageTextBatch, VQABatch
    from mammut.data.box_transforms import BoxedImage, DetectionTransform
    from mammut.data.caption_files import CAPTION_FORMATS, read_captions
    from mammut.data.captions_dataset import CaptionDataset, EvalSample, TrainSample, collate_eval, collate_train
    from mammut.data.coco import CaptionRecord, read_coco_captions
    from mammut.data.detection_dataset import DetectionDataset, DetectionSample, collate_detection
    from mammut.data.errors import BadSampleError, DataFormatError
    from mammut.data.images import load_rgb_image
    from mammut.data.instances import Category, DetectionRecord, Instances, read_instances
    from mammut.data.karpathy import read_karpathy_captions
    from mammut.data.sampling import ResumableRandomSampler
    from mammut.data.tokenizer import DEFAULT_SPECIAL_TOKENS, CaptionTokenizer
    from mammut.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, image_transform
    from mammut.data.vqa import VQARecord, read_vqa
    from mammut.data.vqa_dataset import VQADataset, VQASample, collate_vqa


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
