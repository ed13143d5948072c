"""Closes the loop of source mixing: each step's loss goes back to the mixer that drew its source.

``MammutModule`` adds this callback to every fit; it acts only when the training loader is a
``mammut.data.source_mixing.SourceMixer``. After each step it averages the step's signal (the
loss part named by ``data.adaptive.signal``) over the data-parallel ranks, one collective that
every rank joins, and hands it to the mixer, whose next draw then sees it on every rank alike.
It logs each source's weight and its latest signal as ``train/sources/<name>/weight`` and
``.../loss`` at the logging interval, and gives TensorBoard a chart of all the weights in one
plot (the Custom Scalars tab, "source mixing").
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mammut.data.source_mixing import SourceMixer


def source_mixer(trainer: L.Trainer) -> SourceMixer | None:
    loader = trainer.train_dataloader
    return loader if isinstance(loader, SourceMixer) else None


class SourceFeedback(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mixer = source_mixer(trainer)
        if mixer is None or not trainer.is_global_zero:
            return
        layout = {"source mixing": {
            "weights": ["Multiline", [f"train/sources/{name}/weight" for name in mixer.sources]],
            "losses": ["Multiline", [f"train/sources/{name}/loss" for name in mixer.sources]]}}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(layout)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        mixer = source_mixer(trainer)
        if mixer is None or not isinstance(outputs, dict) or mixer.drawn is None:
            return  # a step skipped for bad samples (one rank alone) trained no source
        signal = _signal(outputs, mixer.weighting.settings.signal)
        if trainer.world_size > 1:
            signal = trainer.strategy.reduce(signal.to(pl_module.device), reduce_op="mean")
        loss = float(signal)
        mixer.observe(loss)
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            metrics = {f"train/sources/{name}/weight": weight for name, weight in mixer.weighting.weights().items()}
            metrics[f"train/sources/{mixer.drawn}/loss"] = loss
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)


def _signal(outputs: dict, name: str) -> torch.Tensor:
    """The step's loss part ``name`` (``loss``: the whole) of its one task."""
    parts = {key.split("/", 1)[1]: value for key, value in outputs.get("parts", {}).items()}
    if name not in parts:
        raise ValueError(f"data.adaptive.signal={name!r} is no loss part of this task; its parts are {sorted(parts)}")
    return parts[name].detach().float()
