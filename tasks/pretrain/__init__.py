"""Pretraining: contrastive and captioning losses trained jointly (MaMMUT, arXiv 2303.16839, Sec. 3.3).

    mammut fit --config configs/pretrain.yaml

``task.py``: ``PretrainTask`` and what it needs from its data (``CaptionInputs``); ``data.py``:
``ImageTextDataModule`` (COCO captions or Karpathy files); ``shard_data.py``: ``ShardTextDataModule``
(training pairs from WebDataset tar shards as img2dataset writes them); ``preset.py``: ``PretrainModule``, a
``MammutModule`` with that one task.
"""

from mammut.tasks.pretrain.data import ImageFiles, ImageTextDataModule
from mammut.tasks.pretrain.preset import PretrainModule
from mammut.tasks.pretrain.shard_data import ShardTextDataModule
from mammut.tasks.pretrain.task import CaptionInputs, PretrainTask, caption_inputs

__all__ = ["CaptionInputs", "ImageFiles", "ImageTextDataModule", "PretrainModule", "PretrainTask", "ShardTextDataModule",
           "caption_inputs"]
