"""The preset for VQA alone.

    mammut fit --config configs/finetune_vqa.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut fit --config configs/finetune_vqa.yaml --config configs/finetune_vqa_peft.yaml --model.init_from=...
"""

from __future__ import annotations

from mammut.model import PrefixConfig
from mammut.module import MammutModule
from mammut.tasks.vqa.task import VQATask


class VQAModule(MammutModule):
    """The preset for VQA alone: a ``MammutModule`` with one ``VQATask`` named "vqa"."""

    def __init__(
        self,
        peft: PrefixConfig | None = None,
        label_smoothing: float = 0.0,
        num_logged_samples: int = 16,
        loss_chunk_tokens: int | None = None,
        **kwargs,
    ):
        """
        Args: those of ``VQATask``, and ``**kwargs``: the shared settings of ``MammutModule``
        (architecture, lr, init_from, freeze, ...).
        """
        super().__init__(tasks={"vqa": VQATask(peft, label_smoothing, num_logged_samples, loss_chunk_tokens)}, **kwargs)
