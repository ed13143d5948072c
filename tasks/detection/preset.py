"""The preset for detection alone.

    mammut fit --config configs/finetune_detection.yaml --model.init_from=runs/pretrain/.../last.ckpt
"""

from __future__ import annotations

from mammut.module import MammutModule
from mammut.tasks.detection.pseudo_labels import PseudoLabelConfig
from mammut.tasks.detection.task import DetectionTask


class DetectionModule(MammutModule):
    """The preset for detection alone: a ``MammutModule`` with one ``DetectionTask`` named "detection"."""

    def __init__(
        self,
        templates: list[str] | None = None,
        focal_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        max_detections: int = 100,
        draw_threshold: float = 0.3,
        num_logged_samples: int = 8,
        train_prompts: str = "mean",
        pseudo_labels: PseudoLabelConfig | None = None,
        **kwargs,
    ):
        """
        Args: those of ``DetectionTask``, and ``**kwargs``: the shared settings of ``MammutModule``
        (architecture, lr, init_from, freeze, ...).
        """
        super().__init__(tasks={"detection": DetectionTask(templates, focal_weight, l1_weight, giou_weight,
                                                           focal_alpha, focal_gamma, max_detections, draw_threshold,
                                                           num_logged_samples, train_prompts, pseudo_labels)},
                         **kwargs)
