"""Closes the loop of source mixing: each step's loss goes back to the mixer that drew its source.

``MammutModule`` adds this callback to every fit; it acts only when the training loader is a
``mammut.data.source_mixing.SourceMixer``. After each step it averages the step's signal (the
loss part named by ``data.adaptive.signal``) over the data-parallel ranks, one collective that
every rank joins, and hands it to the mixer, whose next draw then sees it on every rank alike.
It logs each source's weight and its latest signal as ``train/sources/<name>/weight`` and
``.../loss`` at the logging interval, and gives TensorBoard a chart of all the weights in one
plot (the Custom Scalars tab, "source mixing").

With ``rule: target_gain`` it also measures, on every ``probe_every``-th step, the loss of the
mixer's target batch just before the step and just after it (``MammutModule.probe_loss``; the
"after" of one step is the "before" of the next, so probing every step costs one forward pass
of the target batch per step), and hands the decrease, averaged over the ranks, to the mixer as
the gain of the source drawn (logged as ``train/sources/<name>/gain``).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mammut.data.source_mixing import SourceMixer


def training_mixer(trainer: L.Trainer) -> SourceMixer | None:
    """The run's source mixer, where its training loader is one."""
    loader = trainer.train_dataloader
    return loader if isinstance(loader, SourceMixer) else None


class SourceFeedback(L.Callback):
    def __init__(self):
        self._before: float | None = None  # the target's loss before this step
        self._after: tuple[int, float] | None = None  # (global step, the target's loss then)
        self._target: tuple[object, object] | None = None  # (the mixer's target batch, it on the device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mixer = training_mixer(trainer)
        if mixer is None:
            return
        if _probes(mixer) and trainer.accumulate_grad_batches > 1:
            # A step would then train on several batches, perhaps of several sources: none is its own.
            raise ValueError("data.adaptive.rule=target_gain credits each optimizer step to the one source it "
                             f"trained on; trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} "
                             "makes a step of several batches: use 1, or rule: progress")
        if not trainer.is_global_zero:
            return
        layout = {"source mixing": {
            "weights": ["Multiline", [f"train/sources/{name}/weight" for name in mixer.sources]],
            "losses": ["Multiline", [f"train/sources/{name}/loss" for name in mixer.sources]]}}
        if mixer.weighting.settings.rule == "target_gain":
            layout["source mixing"]["gains"] = ["Multiline", [f"train/sources/{name}/gain" for name in mixer.sources]]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(layout)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int):
        mixer = training_mixer(trainer)
        self._before = None
        if mixer is None or not _probes(mixer) or trainer.global_step % mixer.weighting.settings.probe_every:
            return
        if self._after is not None and self._after[0] == trainer.global_step:
            self._before = self._after[1]  # no step since that probe: the weights are the same
        else:
            self._before = self._probe(trainer, pl_module, mixer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        mixer = training_mixer(trainer)
        if mixer is None or not isinstance(outputs, dict) or mixer.drawn is None:
            return  # a step skipped for bad samples (one rank alone) trained no source
        signal = _signal(outputs, mixer.weighting.settings.signal)
        if trainer.world_size > 1:
            signal = trainer.strategy.reduce(signal.to(pl_module.device), reduce_op="mean")
        loss = float(signal)
        mixer.observe(loss)
        metrics = {f"train/sources/{mixer.drawn}/loss": loss}
        if self._before is not None:
            after = self._probe(trainer, pl_module, mixer)
            mixer.observe_gain(self._before - after)
            metrics[f"train/sources/{mixer.drawn}/gain"] = self._before - after
            self._after = (trainer.global_step, after)
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            metrics.update({f"train/sources/{name}/weight": w for name, w in mixer.weighting.weights().items()})
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, mixer: SourceMixer) -> float:
        """The target batch's loss (the signal part), averaged over the ranks."""
        if self._target is None or self._target[0] is not mixer.target:  # moved once per mixer, not per step
            self._target = (mixer.target, trainer.strategy.batch_to_device(mixer.target, pl_module.device))
        value = _part(pl_module.probe_loss(self._target[1]), mixer.weighting.settings.signal)
        if trainer.world_size > 1:
            value = trainer.strategy.reduce(value, reduce_op="mean")
        return float(value)


def _probes(mixer: SourceMixer) -> bool:
    return mixer.weighting.settings.rule == "target_gain" and mixer.weighting.adaptive


def _signal(outputs: dict, name: str) -> torch.Tensor:
    """The step's loss part ``name`` (``loss``: the whole) of its one task."""
    return _part({key.split("/", 1)[1]: value for key, value in outputs.get("parts", {}).items()}, name)


def _part(parts: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in parts:
        raise ValueError(f"data.adaptive.signal={name!r} is no loss part of this task; its parts are {sorted(parts)}")
    return parts[name].detach().float()
