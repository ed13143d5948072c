"""Callbacks for tests of source mixing. ``SourceTrace``, for the spawned ranks of a DDP test: each
rank writes, per step, the source its mixer drew, the weights it drew with and the progress rule's
recent loss of each source, to ``<folder>/rank<r>.json`` at the end of training."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from mammut.source_feedback import training_mixer


class SourceTrace(Callback):
    def __init__(self, folder: str):
        self.folder, self.steps = Path(folder), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        mixer = training_mixer(trainer)
        self.steps.append({"step": trainer.global_step, "source": mixer.drawn, "weights": mixer.weighting.weights(),
                           "recent_losses": dict(mixer.weighting.fast)})

    def on_train_end(self, trainer, pl_module):
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


class TargetLossAtEnds(Callback):
    """Writes the target batch's loss (the mixer's signal) before the first step and after the last
    to ``<path>``: what the gains the feedback measured, step by step, must add up to."""

    def __init__(self, path: str):
        self.path, self.ends = Path(path), []

    def _target_loss(self, trainer, pl_module) -> float:
        mixer = training_mixer(trainer)
        target = trainer.strategy.batch_to_device(mixer.target, pl_module.device)
        return float(pl_module.probe_loss(target)[mixer.weighting.settings.signal])

    def on_train_start(self, trainer, pl_module):
        self.ends.append(self._target_loss(trainer, pl_module))

    def on_train_end(self, trainer, pl_module):
        self.ends.append(self._target_loss(trainer, pl_module))
        self.path.write_text(json.dumps(self.ends))
