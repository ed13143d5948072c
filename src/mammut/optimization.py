"""AdamW parameter groups, the warmup-cosine schedule, and an optimiser that follows a resumed run's settings."""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], no_weight_decay: set[str],
                     lr_scale: Callable[[str], float], lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups by (decayed, lr multiplier), trainable parameters only.

    Which parameters take no decay is declared by the model and the tasks (``no_weight_decay()``,
    as timm's models do), never guessed from names. Each group records ``decayed`` and
    ``lr_scale`` so that a resumed run can re-apply its own settings (``follow_run_settings``).
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            groups.setdefault((name not in no_weight_decay, lr_scale(name)), []).append(parameter)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr": lr * scale,
             "name": _group_name(decayed, scale), "decayed": decayed, "lr_scale": scale}
            for (decayed, scale), params in sorted(groups.items(), key=lambda group: (not group[0][0], group[0][1]))]


def _group_name(decayed: bool, scale: float) -> str:
    """``decay`` / ``no_decay``, with the lr multiplier when it is not 1 (LearningRateMonitor tags)."""
    return ("decay" if decayed else "no_decay") + ("" if scale == 1.0 else f"_x{scale:g}")


def warmup_cosine(step: int, warmup: int, total: int | float | Callable[[], int | float], min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_ratio``. ``total`` may be
    a function, asked only once the decay has begun (see ``Optimization.configure``)."""
    if step < warmup:
        return (step + 1) / warmup
    if step == warmup:
        return 1.0  # the decay's first step, whatever its length
    total = total() if callable(total) else total
    if not math.isfinite(total) or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def follow_run_settings(schedulers: Iterable, lr: float, weight_decay: float, betas: tuple[float, float]) -> None:
    """Make restored optimisers follow this run's settings.

    Restoring a checkpoint restores its optimiser and schedule too, with the learning rate,
    weight decay and betas of the run that wrote it. The settings given now win (a lower
    ``--model.lr`` is the usual cure for a diverging run); each change is logged.
    """
    for scheduler in schedulers:
        for index, group in enumerate(scheduler.optimizer.param_groups):
            wanted = {"initial_lr": lr * group.get("lr_scale", 1.0), "betas": tuple(betas),
                      "weight_decay": weight_decay if group.get("decayed", True) else 0.0}
            changed = {k: (group.get(k), v) for k, v in wanted.items() if _differs(group.get(k), v)}
            if changed:
                log.info("optimiser group %s follows this run's settings: %s", group.get("name", index),
                         ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
            group.update(wanted)
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                # The schedule as this run defines it (its length follows max_steps too).
                scheduler.base_lrs[index] = wanted["initial_lr"]
                group["lr"] = wanted["initial_lr"] * scheduler.lr_lambdas[index](scheduler.last_epoch)


def _differs(old, new) -> bool:
    if isinstance(new, tuple):
        return old is None or tuple(old) != new
    return old is None or not math.isclose(old, new, rel_tol=1e-12, abs_tol=0.0)


class Optimization:
    """AdamW with warmup and cosine decay, as a module's ``lr``, ``weight_decay``, ``betas``,
    ``warmup_steps``, ``min_lr_ratio`` and ``lr_scales`` set it (see ``MammutModule``)."""

    def __init__(self, lr: float, weight_decay: float, betas: tuple[float, float], warmup_steps: int,
                 min_lr_ratio: float, lr_scales: dict[str, float] | None):
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.min_lr_ratio, self.lr_scales = warmup_steps, min_lr_ratio, dict(lr_scales or {})

    def lr_scale(self, name: str) -> float:
        """The multiplier of the first ``lr_scales`` pattern that matches a parameter's name, else 1."""
        return next((scale for pattern, scale in self.lr_scales.items() if fnmatch.fnmatch(name, pattern)), 1.0)

    def configure(self, named_parameters: Iterable[tuple[str, nn.Parameter]], no_weight_decay: set[str],
                  total_steps: int | float | Callable[[], int | float]) -> dict:
        """Lightning's ``configure_optimizers`` answer: the optimiser and its per-step schedule.

        ``total_steps`` may be a function (the trainer's ``estimated_stepping_batches``), asked once,
        at the first step past the warmup. Asked in ``configure_optimizers`` it would make Lightning
        build the training loader before a resumed run's data position is restored (with the
        strategies that restore after set-up, FSDP and DeepSpeed: Lightning issue #20550), and the
        resumed run would start its epoch again.
        """
        groups = parameter_groups(named_parameters, no_weight_decay, self.lr_scale, self.lr, self.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        total = functools.cache(total_steps) if callable(total_steps) else total_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.warmup_steps, total, self.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def follow(self, schedulers: Iterable) -> None:
        """Restored optimisers take this run's settings (``follow_run_settings``)."""
        follow_run_settings(schedulers, self.lr, self.weight_decay, self.betas)
