"""Stop a run before a non-finite or exploding loss reaches the weights and the checkpoints."""

from __future__ import annotations

import math

# Weight of the past in the running mean of the loss: it spans about the last 50 steps.
LOSS_MEAN_DECAY = 0.98


class LossGuard:
    """A finite loss counts as diverging when it exceeds ``divergence_factor`` times the larger of
    the run's first loss and its running mean: a loss that far above where training started is
    an explosion, not a hard batch. Its state (``history``) goes into checkpoints."""

    def __init__(self, divergence_factor: float | None):
        self.divergence_factor = divergence_factor
        self.history: dict[str, float | None] = {"first": None, "mean": None}

    def check(self, worst: float, detail: str, where: str, step: int) -> None:
        """``worst``: the largest loss of all ranks (inf if any was not finite), so that every
        rank stops together rather than leave the others waiting in a collective."""
        if not math.isfinite(worst):
            raise FloatingPointError(
                f"non-finite loss {where}: {detail}. The weights were not updated; resume from the last "
                f"checkpoint with a lower lr (--model.lr=...) or fix the data.")
        factor, history = self.divergence_factor, self.history
        reference = max(history["first"] or 0.0, history["mean"] or 0.0)
        if factor and reference > 0 and worst > factor * reference:
            raise FloatingPointError(
                f"diverging loss {where}: {worst:.4g}, over {factor:g} times the reference {reference:.4g} "
                f"(the larger of the first loss and the running mean; {detail} on this rank). The weights were "
                f"not updated by this step, but the step before produced them: a checkpoint of step {step} "
                f"may hold them. Resume from an earlier one (the recipes keep the previous checkpoint too) "
                f"with a lower lr (--model.lr=...), or raise --model.divergence_factor.")
        if worst > 0:
            history["first"] = history["first"] or worst
            history["mean"] = worst if history["mean"] is None else (
                LOSS_MEAN_DECAY * history["mean"] + (1 - LOSS_MEAN_DECAY) * worst)
