"""Mixing weights that follow what the model is still learning from: its learning progress on each
stream, or (sources only) what each source's steps do for a held-out target set.

Used for the sources of one task's training data (``mammut.data.source_mixing.SourceMixer``:
the probability of drawing each source's next batch) and for the tasks of a joint run
(``mammut.task_weighting``, ``task_weighting: adaptive``: each task's loss weight).

The signal is learning progress, the recent decrease of each stream's training loss (Graves et
al. 2017, "Automated Curriculum Learning for Neural Networks", Sec. 3; Matiisen et al. 2019,
"Teacher-Student Curriculum Learning"), not the loss itself: a source of noisy alt-text keeps
a high loss that no step lowers, and a source of near-duplicates soon has nothing left to
teach; both make little progress, and both should give way to the data the model is still
learning from. A rule that rewards the loss itself, as a bandit rewarded by loss (Albalak et al.
2023, "Efficient Online Data Mixing for Language Model Pre-Training") would, favours exactly
the noise. DoReMi (Xie et al. 2023) measures the loss against a reference model instead, which
needs a reference run first; learning progress needs none.

For each stream ``i``, on each step that trained on it, with its loss ``l`` (averaged over the
data-parallel ranks, so every rank computes the same weights) and ``k`` the steps since its
previous loss (the means span steps of training, not draws of the stream):

    fast_i <- b_f^k * fast_i + (1 - b_f^k) * l        slow_i <- b_s^k * slow_i + (1 - b_s^k) * l
    progress_i = max(slow_i - fast_i, 0) / slow_i       (the relative decrease of late)
    w_i = floor + (1 - n * floor) * softmax_i(log prior_i + progress_i / (mean_j progress_j * temperature))

Progress is divided by its mean over the streams, so the weights do not depend on the loss's
scale or on how fast training goes overall: with ``temperature`` 1, a stream making twice the
mean progress weighs e times one making the mean. Until every stream has been seen ``warmup``
times, the weights are the priors, and both means follow the loss with ``b_f`` (the first steps'
drop is not progress of the streams drawn first). ``floor`` keeps every stream drawn now and then, so that its
progress is still measured and a source that becomes useful again is noticed.

A stream's own loss credits it with progress that other streams' steps made (a noisy source's
loss falls as the clean one is learned) and with progress that does not last (fitting what is
particular to it, lost again once it is drawn less). ``rule: target_gain`` credits each source
instead with what a step on its data does for a small held-out **target** set that the user
trusts (``data.adaptive_target``): the target's loss just before the step minus just after it,

    gain = l_target(theta_before) - l_target(theta_after)       (on the same target batch)

the finite-difference form of DoGE's generalization estimate (Fan et al. 2023, "DoGE: Domain
Reweighting with Generalization Estimation", Sec. 2: a domain's weight follows the inner product
of its gradient with the target's) and Graves et al.'s "target prediction gain" (Sec. 3.1: the
loss on a target task before and after a step on the task drawn). Each gain is averaged per
source over steps as the slow mean above (``b_s^k``), and

    w_i = floor + (1 - n * floor) * softmax_i(log prior_i + gain_i / (mean_j |gain_j| * temperature))

A gain can be negative: a step that makes the target worse lowers its source's weight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MIXINGS = ("fixed", "adaptive")
RULES = ("progress", "target_gain")


@dataclass
class LearningProgressSettings:
    """The rule's settings (``data.adaptive`` in a config). Defaults as measured in docs/adaptive-mixing.md.

    Args:
        floor: the least weight of any stream (a fraction of the total, below 1 / streams).
        temperature: how sharply the weights follow progress; larger is closer to the priors.
        fast_decay: the weight of the past in the recent loss, per step (it spans about 1 / (1 - b)
            steps); ``progress`` only.
        slow_decay: the same for the older loss it is compared with; with ``target_gain``, for the
            mean gain.
        warmup: losses (``progress``) or gains (``target_gain``) of each stream before its weight changes.
        signal: which part of the task's loss is measured: ``loss`` (the whole) or a part the task
            logs, e.g. ``contrastive_loss`` for pretraining; with ``target_gain``, of the target's loss.
        rule: ``progress``, each stream's own loss decrease; or ``target_gain``, each source's
            steps' gain on a held-out target batch (source mixing only; the data module names the
            target set).
        probe_every: with ``target_gain``, measure the gain of every k-th step (each measurement
            costs a forward pass of the target batch, two when k > 1).
    """

    floor: float = 0.05
    temperature: float = 1.0
    fast_decay: float = 0.9
    slow_decay: float = 0.99
    warmup: int = 20
    signal: str = "loss"
    rule: str = "progress"
    probe_every: int = 1

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"the adaptive rule must be one of {RULES}, got {self.rule!r}")
        if self.probe_every < 1:
            raise ValueError(f"probe_every must be at least 1, got {self.probe_every}")
        if not 0 < self.fast_decay < self.slow_decay < 1:
            raise ValueError(f"need 0 < fast_decay < slow_decay < 1, got {self.fast_decay} and {self.slow_decay}")
        if self.temperature <= 0 or self.floor < 0 or self.warmup < 1:
            raise ValueError(f"need temperature > 0, floor >= 0 and warmup >= 1, got {self.temperature}, "
                             f"{self.floor} and {self.warmup}")


class LearningProgressWeights:
    """Each stream's weight (summing to 1): the priors (``adaptive=False``), or following learning progress as above.

    Args:
        priors: each stream's starting weight (positive; normalised here).
        adaptive: follow learning progress; False keeps the priors.
        settings: the rule's settings.
    """

    def __init__(self, priors: Mapping[str, float], adaptive: bool = True,
                 settings: LearningProgressSettings | None = None):
        if not priors:
            raise ValueError("nothing to weigh: no streams")
        for name, prior in priors.items():
            if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not math.isfinite(prior) or prior <= 0:
                raise ValueError(f"the weight of {name!r} must be a positive number, got {prior!r}")
        self.names = sorted(priors)
        total = sum(priors.values())
        self.priors = {name: priors[name] / total for name in self.names}
        self.adaptive = adaptive
        self.settings = settings or LearningProgressSettings()
        if self.settings.floor * len(self.names) >= 1:
            raise ValueError(f"a floor of {self.settings.floor} for each of {len(self.names)} streams leaves nothing "
                             "to adapt; lower it below 1 / streams")
        self.fast: dict[str, float] = {}
        self.slow: dict[str, float] = {}
        self.seen = dict.fromkeys(self.names, 0)
        self.last_step: dict[str, int] = {}  # the step of each stream's last loss, with ``observe(step=)``
        self.gain: dict[str, float] = {}  # ``target_gain``: each source's mean gain on the target
        self.gains_seen = dict.fromkeys(self.names, 0)
        self.last_gain_step: dict[str, int] = {}
        self.gains_dropped = dict.fromkeys(self.names, 0)  # non-finite, left out of the means

    def observe(self, losses: Mapping[str, float], step: int | None = None) -> None:
        """Take in this step's loss of each stream that trained (the same values on every rank).

        ``step`` counts training steps: the means then decay per step, not per draw, so that a
        stream drawn rarely is not credited with the progress of all the steps between its draws
        (its loss falls further between two draws than a frequent stream's does). Without it,
        each call is one step (every stream trains at every step, as the tasks of a joint run).
        """
        s = self.settings
        for name, loss in losses.items():
            if name not in self.seen:
                raise KeyError(f"no stream {name!r}; the streams are {self.names}")
            if not math.isfinite(loss):
                continue  # the loss guard stops the run; a non-finite value must not poison the means
            steps = 1 if step is None or name not in self.last_step else max(step - self.last_step[name], 1)
            if step is not None:
                self.last_step[name] = step
            if self.seen[name] == 0:
                self.fast[name] = self.slow[name] = loss
            else:
                # In its warmup both means follow the loss closely, so that the first steps' drop,
                # which any batch would give, is not credited to the streams drawn first.
                slow_decay = s.fast_decay if self.seen[name] < s.warmup else s.slow_decay
                fast, slow = s.fast_decay ** steps, slow_decay ** steps
                self.fast[name] = fast * self.fast[name] + (1 - fast) * loss
                self.slow[name] = slow * self.slow[name] + (1 - slow) * loss
            self.seen[name] += 1

    def observe_gain(self, name: str, gain: float, step: int) -> None:
        """Take in the target's loss decrease that training step ``step``, on ``name``'s data, gave."""
        if name not in self.gains_seen:
            raise KeyError(f"no stream {name!r}; the streams are {self.names}")
        if not math.isfinite(gain):  # a target loss that overflowed must not poison the mean
            self.gains_dropped[name] += 1
            if self.gains_dropped[name] == 1:
                log.warning("source %s: a non-finite gain on the target set at step %d is left out (and any later "
                            "ones, unannounced); check data.adaptive_target", name, step)
            return
        if self.gains_seen[name] == 0:
            self.gain[name] = gain
        else:
            past = self.settings.slow_decay ** max(step - self.last_gain_step[name], 1)
            self.gain[name] = past * self.gain[name] + (1 - past) * gain
        self.last_gain_step[name] = step
        self.gains_seen[name] += 1

    def progress(self) -> dict[str, float]:
        """Each stream's relative loss decrease of late (0 before it was seen)."""
        return {name: max(self.slow[name] - self.fast[name], 0.0) / self.slow[name]
                if self.seen[name] and self.slow[name] > 0 else 0.0 for name in self.names}

    def weights(self) -> dict[str, float]:
        """Each stream's weight for the next step, summing to 1."""
        s = self.settings
        if s.rule == "target_gain":
            credit, seen = self.gain, self.gains_seen
            scale = sum(abs(g) for g in credit.values()) / len(self.names)
        else:
            credit, seen = self.progress(), self.seen
            scale = sum(credit.values()) / len(self.names)
        if not self.adaptive or min(seen.values()) < s.warmup:
            return dict(self.priors)
        if scale <= 0:  # nothing improves: nothing to prefer
            return dict(self.priors)
        logits = torch.tensor([math.log(self.priors[n]) + credit[n] / (scale * s.temperature) for n in self.names],
                              dtype=torch.float64)
        shares = torch.softmax(logits, dim=0).tolist()
        return {name: s.floor + (1 - len(self.names) * s.floor) * share for name, share in zip(self.names, shares)}

    def state_dict(self) -> dict:
        return {"fast": dict(self.fast), "slow": dict(self.slow), "seen": dict(self.seen),
                "last_step": dict(self.last_step), "gain": dict(self.gain), "gains_seen": dict(self.gains_seen),
                "last_gain_step": dict(self.last_gain_step)}

    def load_state_dict(self, state: Mapping) -> None:
        if sorted(state.get("seen", {})) != self.names:
            raise ValueError(f"the saved mixing weights are of streams {sorted(state.get('seen', {}))}, "
                             f"these of {self.names}")
        self.fast, self.slow, self.seen = dict(state["fast"]), dict(state["slow"]), dict(state["seen"])
        self.last_step = dict(state.get("last_step", {}))
        self.gain, self.last_gain_step = dict(state.get("gain", {})), dict(state.get("last_gain_step", {}))
        self.gains_seen = dict(state.get("gains_seen", dict.fromkeys(self.names, 0)))
