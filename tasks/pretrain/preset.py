"""The preset for pretraining alone.

    mammut fit --config configs/pretrain.yaml
"""

from __future__ import annotations

from mammut.module import MammutModule
from mammut.tasks.pretrain.task import PretrainTask


class PretrainModule(MammutModule):
    """The preset for pretraining alone: a ``MammutModule`` with one ``PretrainTask`` named "pretrain"."""

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
        **kwargs,
    ):
        """
        Args: those of ``PretrainTask``, and ``**kwargs``: the shared settings of
        ``MammutModule`` (architecture, lr, init_from, ...).
        """
        task = PretrainTask(contrastive_weight, caption_weight, contrastive_loss, focal_gamma, local_loss,
                            label_smoothing, num_logged_images, loss_chunk_tokens)
        super().__init__(tasks={"pretrain": task}, **kwargs)
