"""Stop a run before a non-finite or exploding loss reaches the weights and the checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# Weight of the past in the running mean of the loss: it spans about the last 50 steps.
LOSS_MEAN_DECAY = 0.98


class LossGuard:
    """A finite loss counts as diverging when it exceeds ``divergence_factor`` times the larger of
    the run's first loss and its running mean: a loss that far above where training started is
    an explosion, not a hard batch. Its state (``history``) goes into checkpoints."""

    def __init__(self, divergence_factor: float | None):
        self.divergence_factor = divergence_factor
        self.history: dict[str, float | None] = {"first": None, "mean": None}

    def check_step(self, loss: Tensor, parts: dict[str, Tensor], all_ranks: Callable[[Tensor, str], Tensor],
                   step: int, epoch: int, newest_checkpoint: str | None = None, held: bool = False) -> None:
        """Check a training step's loss: the largest of all ranks (``all_ranks(value, "max")``), an
        infinite one for a rank whose loss is not finite. ``newest_checkpoint``: the newest checkpoint
        written; ``held``: whether checkpoints wait for this check (``mammut.stopping``)."""
        local = loss.detach().float()
        worst = all_ranks(local if torch.isfinite(local) else torch.full_like(local, math.inf), "max")
        detail = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items())
        self.check(float(worst), detail, f"at global step {step} (epoch {epoch})", step, newest_checkpoint, held)

    def check(self, worst: float, detail: str, where: str, step: int, newest_checkpoint: str | None = None,
              held: bool = False) -> None:
        """``worst``: the largest loss of all ranks (inf if any was not finite), so that every
        rank stops together rather than leave the others waiting in a collective."""
        if held:
            resume = (f"No checkpoint holds the weights that gave this loss (each is written only once the next "
                      f"step's loss passes this check): resume from the newest, {newest_checkpoint}, "
                      if newest_checkpoint else "No checkpoint was written yet: start again ")
        else:
            resume = (f"The step before produced these weights, and a checkpoint of step {step} may hold them: "
                      "resume from an earlier one (the recipes keep the previous checkpoint too) ")
        if not math.isfinite(worst):
            raise FloatingPointError(f"non-finite loss {where}: {detail}. The weights were not updated by this step. "
                                     f"{resume}with a lower lr (--model.lr=...), or fix the data.")
        factor, history = self.divergence_factor, self.history
        reference = max(history["first"] or 0.0, history["mean"] or 0.0)
        if factor and reference > 0 and worst > factor * reference:
            raise FloatingPointError(
                f"diverging loss {where}: {worst:.4g}, over {factor:g} times the reference {reference:.4g} "
                f"(the larger of the first loss and the running mean; {detail} on this rank). The weights were "
                f"not updated by this step. {resume}with a lower lr (--model.lr=...), or raise "
                "--model.divergence_factor.")
        if worst > 0:
            history["first"] = history["first"] or worst
            history["mean"] = worst if history["mean"] is None else (
                LOSS_MEAN_DECAY * history["mean"] + (1 - LOSS_MEAN_DECAY) * worst)
