"""Task weights that follow the tasks' losses in a joint run.

Loss-balanced task weighting (Liu, Liang and Gitter, "Loss-Balanced Task Weighting to Reduce
Negative Transfer in Multi-Task Learning", AAAI 2019): each task's weight is scaled by
``(L_t / L_0) ** alpha``, its loss now over its loss at the start. A task that has already
learned much of what it can (its loss far below where it began) gives way to the tasks that
have not, so a quick task does not keep pulling the shared weights its way.

Here ``L_t`` is a running mean over about the last 50 steps (one batch is too noisy a measure),
``L_0`` the task's first loss, and the weights are rescaled to keep the sum of the configured
ones. Every rank feeds in the same (all-reduced) losses, so every
rank weighs the tasks alike; the state goes into checkpoints, so a resumed run weighs as the
uninterrupted one would have.

Adaptive task weighting (``"adaptive"``) gives the weight to the tasks whose loss is still falling
instead: learning progress, the rule that also weighs a task's data sources
(``mammut.learning_progress``), its shares rescaled to the sum of the configured weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mammut.learning_progress import LearningProgressSettings, LearningProgressWeights

WEIGHTINGS = ("fixed", "loss_balanced", "adaptive")
# Weight of the past in each task's running mean of the loss: it spans about the last 50 steps.
LOSS_MEAN_DECAY = 0.98


class TaskWeighting:
    """The weight of each task's loss at each step: fixed, loss-balanced or adaptive, as above.

    Args:
        base: each task's configured weight (``model.task_weights``).
        mode: ``"fixed"`` (always ``base``), ``"loss_balanced"`` or ``"adaptive"``.
        alpha: the exponent of the loss ratio; 0 is fixed weighting, larger shifts weight faster.
        adaptive: the learning-progress rule's settings (``"adaptive"``).
    """

    def __init__(self, base: Mapping[str, float], mode: str = "fixed", alpha: float = 0.5,
                 adaptive: LearningProgressSettings | None = None):
        if mode not in WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {WEIGHTINGS}, got {mode!r}")
        if alpha < 0:
            raise ValueError(f"the loss-balance exponent must be 0 or more, got {alpha}")
        if mode == "adaptive" and adaptive is not None and adaptive.rule != "progress":
            # Every task trains at every step, so no step can be credited to one task alone.
            raise ValueError(f"adaptive task weighting follows each task's learning progress (rule: progress); "
                             f"rule {adaptive.rule!r} weighs data sources")
        self.base, self.mode, self.alpha = dict(base), mode, alpha
        self.first: dict[str, float] = {}
        self.mean: dict[str, float] = {}
        self.progress = LearningProgressWeights(self.base, settings=adaptive) if mode == "adaptive" else None

    def weights(self) -> dict[str, float]:
        """Each task's weight for the next step."""
        if self.progress is not None:
            total = sum(self.base.values())
            return {task: share * total for task, share in self.progress.weights().items()}
        if self.mode == "fixed" or not all(task in self.mean for task in self.base):
            return dict(self.base)  # until every task has a first loss, there is nothing to balance
        scaled = {task: self.base[task] * (self.mean[task] / self.first[task]) ** self.alpha for task in self.base}
        norm = sum(self.base.values()) / sum(scaled.values())
        return {task: weight * norm for task, weight in scaled.items()}

    def update(self, losses: Mapping[str, float]) -> None:
        """Take in this step's loss of each task that trained (the same values on every rank)."""
        if self.progress is not None:
            self.progress.observe({task: loss for task, loss in losses.items() if loss > 0})
            return
        for task, loss in losses.items():
            if not loss > 0:  # a step of all-bad samples, or a loss that cannot be a ratio's base
                continue
            self.first.setdefault(task, loss)
            previous = self.mean.get(task)
            self.mean[task] = loss if previous is None else LOSS_MEAN_DECAY * previous + (1 - LOSS_MEAN_DECAY) * loss

    def update_all_ranks(self, task_losses: Mapping[str, Tensor], all_ranks: Callable[[Tensor, str], Tensor]) -> None:
        """Take in this step's task losses averaged over the ranks (``all_ranks(value, "mean")``), so
        that every rank weighs the next step's tasks alike."""
        if self.mode == "fixed":
            return
        losses = all_ranks(torch.stack([loss.float() for loss in task_losses.values()]), "mean")
        self.update(dict(zip(task_losses, losses.tolist())))

    def state_dict(self) -> dict:
        state = {"first": dict(self.first), "mean": dict(self.mean)}
        if self.progress is not None:
            state["progress"] = self.progress.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.first, self.mean = dict(state.get("first", {})), dict(state.get("mean", {}))
        if self.progress is not None and "progress" in state:
            self.progress.load_state_dict(state["progress"])
