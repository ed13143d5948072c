"""One task's training data from several named sources, a source drawn for each batch.

Web pretraining data is a mixture of sources of unequal worth (a clean captioned set, noisy
alt-text, redundant near-duplicates); each source here is its own DataLoader, and the mixer
draws the source of each step's batch with probabilities that are fixed or adapt to what the
model still learns from each (``mammut.learning_progress``; ``data.mixing: fixed | adaptive``).
A batch holds one source's samples, so its loss is that source's loss: the adaptive rule needs
no per-sample loss.

- Rank-consistent. Step ``k`` of epoch ``e`` draws with the uniform number ``u[k]`` of a
  generator seeded by ``(seed, e)`` alone, and with weights computed from losses averaged over
  the ranks (``observe``, fed by ``mammut.source_feedback.SourceFeedback``): every rank draws
  the same source at every step, while each rank's loaders give it its own shard of that source.
- Deterministic for a seed, and resumable exactly: the state holds the position (epoch, steps
  done), how many batches each source has given, and the rule's running means, so a resumed run
  draws the same sources with the same weights and reads the same batches.
- A floor on every weight (``LearningProgressSettings.floor``) keeps every source drawn.

Each source's loader is read as an endless stream (``LoaderStream``): a small source starts its
next epoch when it runs out, independently of the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from mammut.data.task_mixing import LoaderStream, epoch_generator
from mammut.learning_progress import LearningProgressWeights

log = logging.getLogger(__name__)


def draw(weights: Mapping[str, float], u: float) -> str:
    """The stream whose share of [0, 1) holds ``u``, the streams in sorted order."""
    names = sorted(weights)
    total, edge = sum(weights.values()), 0.0
    for name in names:
        edge += weights[name] / total
        if u < edge:
            return name
    return names[-1]  # u within rounding of 1


class SourceMixer:
    """Yields one source's batch per step; ``len()`` steps per epoch.

    Args:
        loaders: each source's training DataLoader for this rank: sharded by a
            ``ResumableRandomSampler``, or a stream of tar shards that splits itself.
        weighting: the sources' weights (priors, and the adaptive rule if any).
        seed: seeds the draws; the same on every rank.
        steps_per_epoch: steps in one epoch of the mixer; by default the sources' batches together.
        layout: (ranks, loader workers) of this run, saved with the state, so that a run resumed
            with another layout carries each source's position over by the samples it had read.
        target: ``rule: target_gain``: this rank's batch of the target set, whose loss before and
            after each step credits the source drawn (``mammut.source_feedback``).
    """

    def __init__(self, loaders: Mapping[str, DataLoader], weighting: LearningProgressWeights, seed: int = 0,
                 steps_per_epoch: int | None = None, layout: tuple[int, int] = (1, 1), target: Any = None):
        if sorted(loaders) != weighting.names:
            raise ValueError(f"sources {sorted(loaders)} but weights for {weighting.names}")
        if weighting.adaptive and weighting.settings.rule == "target_gain" and target is None:
            raise ValueError("data.adaptive.rule=target_gain measures each source's steps on a target set, and none "
                             "was given: set data.adaptive_target")
        self.sources, self.weighting, self.seed, self.layout = weighting.names, weighting, seed, tuple(layout)
        self._streams = {name: LoaderStream(name, loaders[name], kind="source") for name in self.sources}
        self.steps_per_epoch = (sum(s.batches_per_epoch for s in self._streams.values())
                                if steps_per_epoch is None else steps_per_epoch)
        if self.steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {self.steps_per_epoch}")
        self.epoch, self.steps_done = 0, 0
        self.drawn: str | None = None  # the source of the last batch given
        self.target = target
        self._uniforms: tuple[int, list[float]] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    # A generator, so that iter() alone (Lightning calls it to check that a loader is iterable) changes nothing.
    def __iter__(self) -> Iterator[Any]:
        if self.steps_done >= self.steps_per_epoch:
            self.epoch, self.steps_done = self.epoch + 1, 0
        while self.steps_done < self.steps_per_epoch:
            self.drawn = draw(self.weighting.weights(), self._epoch_uniforms()[self.steps_done])
            batch = self._streams[self.drawn].next_batch()
            self.steps_done += 1
            yield batch

    def observe(self, loss: float) -> None:
        """Take in the loss of the last batch given (averaged over the ranks)."""
        if self.drawn is None:
            raise RuntimeError("no batch was drawn yet: nothing to observe")
        self.weighting.observe({self.drawn: loss}, step=sum(self.batches_read.values()))

    def observe_gain(self, gain: float) -> None:
        """Take in the target's loss decrease that the step on the last batch given made (averaged over the ranks)."""
        if self.drawn is None:
            raise RuntimeError("no batch was drawn yet: nothing to observe")
        self.weighting.observe_gain(self.drawn, gain, step=sum(self.batches_read.values()))

    @property
    def batches_read(self) -> dict[str, int]:
        """Batches each source has given since the start of the run."""
        return {name: stream.batches_read for name, stream in self._streams.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "steps_done": self.steps_done, "batches_read": self.batches_read,
                "drawn": self.drawn, "weighting": self.weighting.state_dict(), "seed": self.seed,
                "priors": dict(self.weighting.priors), "adaptive": self.weighting.adaptive, "layout": list(self.layout)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        setup = {key: state.get(key) for key in ("seed", "priors", "adaptive")}
        if setup != {"seed": self.seed, "priors": self.weighting.priors, "adaptive": self.weighting.adaptive}:
            log.warning("resuming the source mixer with another setup (saved %s): the sources drawn from here on "
                        "are not those the interrupted run would have drawn", setup)
        if sorted(state["batches_read"]) != self.sources:
            raise ValueError(f"the checkpoint's mixer read sources {sorted(state['batches_read'])}; this run has "
                             f"{self.sources}")
        self.weighting.load_state_dict(state["weighting"])
        saved_layout = tuple(state.get("layout", self.layout))
        if saved_layout != self.layout:
            log.warning("resuming the source mixer saved with %d ranks × %d workers on %d × %d: each source goes "
                        "on after the samples it had given, the rest of its epoch drawn afresh",
                        *saved_layout, *self.layout)
        for name, stream in self._streams.items():
            # Batches per rank scale with the ranks; the samples read (all ranks together) carry over.
            stream.seek(state["batches_read"][name] * saved_layout[0] // self.layout[0],
                        same_layout=saved_layout == self.layout)
        self.epoch, self.steps_done, self.drawn = state["epoch"], state["steps_done"], state["drawn"]

    def _epoch_uniforms(self) -> list[float]:
        if self._uniforms is None or self._uniforms[0] != self.epoch:
            generator = epoch_generator(self.seed, self.epoch)
            self._uniforms = (self.epoch, torch.rand(self.steps_per_epoch, generator=generator,
                                                     dtype=torch.float64).tolist())
        return self._uniforms[1]
