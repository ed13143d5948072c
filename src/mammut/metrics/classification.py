"""Zero-shot classification scores: top-k accuracy and mean per-class recall, beside chance.

As CLIP_benchmark scores them (``clip_benchmark.metrics.zeroshot_classification``): top-k counts
an image right when its class is among the k highest logits (``torch.topk``); mean per-class
recall is the recall of each class that has images, averaged (scikit-learn's balanced accuracy,
which ignores classes without images). Rows labelled -1 are padding and are left out.

States are sums, so under DDP every rank's part is added up before ``compute``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class ZeroShotAccuracy(Metric):
    """Top-k accuracy for each k of ``top_k`` (at most the number of classes) and mean per-class
    recall; ``compute()`` adds ``images``, the number of images scored."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, top_k: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.top_k = tuple(k for k in top_k if k <= num_classes)
        self.add_state("top_k_correct", default=torch.zeros(len(self.top_k), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_count", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """``logits`` (B, C) and ``labels`` (B,), -1 for a padding row."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or labels.shape != logits.shape[:1]:
            raise ValueError(f"expected logits (B, {self.num_classes}) and labels (B,), got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
        real = labels >= 0
        logits, labels = logits[real], labels[real]
        if len(labels) == 0:
            return
        ranked = logits.topk(max(self.top_k), dim=1).indices  # (B, k_max), best first
        hits = ranked == labels[:, None]
        for n, k in enumerate(self.top_k):
            self.top_k_correct[n] += hits[:, :k].any(dim=1).sum()
        self.class_count += torch.bincount(labels, minlength=self.num_classes)
        self.class_correct += torch.bincount(labels[hits[:, 0]], minlength=self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        total = self.class_count.sum()
        if total == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any image was scored")
        scores = {f"top{k}": self.top_k_correct[n].double() / total for n, k in enumerate(self.top_k)}
        present = self.class_count > 0
        scores["mean_per_class_recall"] = (self.class_correct[present].double() / self.class_count[present]).mean()
        scores["images"] = total  # how many were scored, every rank's together
        return scores


def chance_accuracy(num_classes: int, top_k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """What a uniformly random ranking of the classes scores: k / C at top-k, 1 / C mean per-class
    recall. Keys match ``ZeroShotAccuracy.compute()``."""
    chance = {f"top{k}": k / num_classes for k in top_k if k <= num_classes}
    chance["mean_per_class_recall"] = 1 / num_classes
    return chance
