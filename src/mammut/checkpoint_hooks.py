"""How a MammutModule's weights come in and go out with checkpoints.

Every way in passes through the one door, ``mammut.model.weights``: ``init_from`` and an adapter
checkpoint's base through ``load_weights``; a restore (``--ckpt_path``, ``load_from_checkpoint``)
through ``on_load_checkpoint``, which conforms the checkpoint's state to today's names and shapes
before Lightning loads it strictly. Checkpoints also hold the run's counts, loss history and task
weighting, so that a resumed run goes on as the uninterrupted one would have.
"""

from __future__ import annotations

import logging

import torch

from mammut.model.token_use import NOT_RECORDED, restart_unmet_rows
from mammut.model.weights import LoadReport, conform, load_mammut_weights

log = logging.getLogger(__name__)


class CheckpointHooks:
    """Mixed into ``MammutModule`` (``self.tasks``, ``self.trained``, ``self.counts``,
    ``self.loss_guard``, ``self.task_weighting``)."""

    def legacy_renames(self) -> dict[str, str]:
        """Key prefixes of checkpoints written before tasks were components (a task's parameters at
        the top level, e.g. ``prefix.*``) -> their names now (``tasks.<name>.*``)."""
        return {old: f"tasks.{name}.{new}" for name, task in self.tasks.items() for old, new in task.legacy_keys().items()}

    def load_weights(self, path: str, strict: bool = False) -> LoadReport:
        """Copy matching parameters from a weights file through the one door (``mammut.model.weights``);
        with ``restart_unmet_tokens``, the vocabulary rows its training never met start anew
        (``mammut.model.token_use``). The same file gives the same rows, so an adapter's base is
        rebuilt as it was trained on."""
        report = load_mammut_weights(self, path, model_prefix="model.", renames=self.legacy_renames(), strict=strict)
        use = self.model.token_use
        if self.restart_unmet_tokens and use.recorded:
            embedding = self.model.decoder.token_embedding.weight
            unmet = restart_unmet_rows(embedding.data, use.met(), torch.Generator().manual_seed(0))
            if not self.model.config.tie_word_embeddings:
                restart_unmet_rows(self.model.decoder.lm_head.weight.data, use.met(), torch.Generator().manual_seed(1))
            log.info("%s: %d of %d vocabulary rows were never in its training text; they start at the mean of "
                     "the other rows (restart_unmet_tokens)", path, unmet, embedding.shape[0])
        elif self.restart_unmet_tokens:
            log.info("%s does not record which vocabulary rows its training met: every row starts as trained", path)
        return report

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, without running code and without reading the
        checkpoint's ``init_from`` again: the checkpoint already holds every weight, or, for an
        adapter checkpoint, names its base, which ``on_load_checkpoint`` loads. ``base=path``: an
        adapter checkpoint's base weights, where they are now if they moved (checked by hash)."""
        kwargs.setdefault("weights_only", True)
        base = kwargs.pop("base", None)
        kwargs["init_from"] = str(base) if base else None
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.trained.on_save(checkpoint, self, self.tasks)
        checkpoint.update(self.counts.state_dict())
        checkpoint["loss_history"] = dict(self.loss_guard.history)
        checkpoint["task_weighting"] = self.task_weighting.state_dict()
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if data is not None:  # which recipe wrote it (``mammut.resume.check_same_recipe``)
            checkpoint["recipe"] = {"data": f"{type(data).__module__}.{type(data).__qualname__}"}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restoring (``--ckpt_path``, ``load_from_checkpoint``): the checkpoint's state under today's
        names and shapes (``conform``); Lightning then loads it, strictly."""
        self.counts.load_state_dict(checkpoint)
        self.loss_guard.history.update(checkpoint.get("loss_history", {}))
        self.task_weighting.load_state_dict(checkpoint.get("task_weighting", {}))
        state = checkpoint.setdefault("state_dict", {})
        fitted, unplaced = conform(state, self.state_dict(), self.legacy_renames())
        # What has no place stays, for Lightning's strict load to name it.
        fitted.update({key: state[key] for key in unplaced if key in state})
        state.clear()
        state.update(fitted)
        if self.trained.attach_base(checkpoint, self.load_weights):
            for name, value in self.state_dict().items():  # the base's weights, under the adapter
                state.setdefault(name, value)
        # A checkpoint from before token use was kept: which rows it met is unknown.
        state.setdefault("model." + self.model.TOKEN_USE, torch.full_like(self.model.token_use.counts, NOT_RECORDED))
