"""Open-vocabulary detection (MaMMUT, arXiv 2303.16839, Sec. 3.4; heads and loss after OWL-ViT).

    mammut fit --config configs/finetune_detection.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut predict --config configs/finetune_detection.yaml --ckpt_path=runs/finetune_detection/.../last.ckpt \\
        --data.predict_images=[photo.jpg] --data.predict_words=[hexagon,cross]

``task.py``: ``DetectionTask`` and what it needs from its data (``DetectionInputs``); ``data.py``:
``DetectionDataModule`` (COCO instances or LVIS v1 files); ``preset.py``: ``DetectionModule``, a
``MammutModule`` with that one task.
"""

from mammut.tasks.detection.data import DetectionDataModule, median_box_size
from mammut.tasks.detection.preset import DetectionModule
from mammut.tasks.detection.task import (DetectionInputs, DetectionTask, best_class_per_box, box_corners, class_name,
                                         lvis_scores)

__all__ = ["DetectionDataModule", "DetectionInputs", "DetectionModule", "DetectionTask", "best_class_per_box",
           "box_corners", "class_name", "lvis_scores", "median_box_size"]
