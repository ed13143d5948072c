"""MammutModule: the one LightningModule that holds the shared encoder-decoder.

Everything every task needs lives here: building the model, AdamW with warmup and cosine
decay, freezing by name pattern, loading (partial) weights, compilation and FSDP2 sharding,
the non-finite loss guard and the common logging. A task subclasses it and adds its loss,
metrics and a light head.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math

import lightning as L
import torch
from torch import Tensor, nn

from mammut import sharding
from mammut.model import GenerationConfig, Mammut, MammutConfig
from mammut.model.weights_file import read_state_dict

log = logging.getLogger(__name__)

# Weight of the past in the running mean of the loss: it spans about the last 50 steps.
LOSS_MEAN_DECAY = 0.98


class MammutModule(L.LightningModule):
    def __init__(
        self,
        architecture: MammutConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        freeze: list[str] | None = None,
        lr_scales: dict[str, float] | None = None,
        init_from: str | None = None,
        init_strict: bool = False,
        grad_checkpointing: bool = False,
        compile: bool = False,
        generation: GenerationConfig | None = None,
        divergence_factor: float | None = 1000.0,
    ):
        """
        Args:
            architecture: the model's shape (see ``mammut.model.MammutConfig`` and configs/model/).
            lr: peak learning rate, reached after ``warmup_steps``, then cosine decay.
            weight_decay: AdamW decay, not applied to norms, biases, embeddings or the temperature.
            betas: AdamW betas.
            warmup_steps: linear warmup from 0 to ``lr``.
            min_lr_ratio: the learning rate at the end of training, as a fraction of ``lr``.
            freeze: glob patterns of parameter names to freeze, e.g. ``["model.vision.*"]``.
            lr_scales: glob pattern of parameter names -> multiplier of ``lr`` for them, e.g.
                ``{"peft.prompt": 10.0}``; the first matching pattern applies.
            init_from: weights to start from: a Lightning checkpoint, a torch state dict or a
                .safetensors file. Parameters are matched by name and shape. The file is read
                without running code (``weights_only``). Restoring a checkpoint of this run
                (``--ckpt_path``, ``load_from_checkpoint``) never reads it again: the checkpoint
                holds every weight.
            init_strict: fail if any parameter of the model is not found with its shape in
                ``init_from``; otherwise the missing ones keep their initialisation and are listed.
            grad_checkpointing: recompute each transformer block's activations in the backward
                pass, which saves memory for about a third more compute. Works under DDP and
                FSDP2; with ``configs/strategy/fsdp.yaml``, which checkpoints through the
                strategy instead, leave it off.
            compile: ``torch.compile`` each transformer block (in ``configure_model``, before
                sharding); the first steps are slow while it compiles.
            generation: decoding settings used in evaluation and prediction.
            divergence_factor: stop training, before the weights are updated, when a finite
                loss exceeds this multiple of the larger of the first loss and the running mean
                of the losses (an explosion the non-finite check would catch only steps later,
                after checkpoints had saved it). None: no such check.
        """
        super().__init__()
        self.save_hyperparameters()
        # Checkpoints hold settings as plain data, which loads without unpickling any class.
        for name, value in self.hparams.items():
            if dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        # Checkpoints written by the CLI store these settings as plain dicts.
        self.architecture = MammutConfig(**architecture) if isinstance(architecture, dict) else architecture or MammutConfig()
        self.generation = GenerationConfig(**generation) if isinstance(generation, dict) else generation or GenerationConfig()
        self.model = Mammut(self.architecture)
        self.add_task_modules()
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if init_from:
            self.load_weights(init_from, strict=init_strict)
        if freeze:
            self.freeze_matching(freeze)
        self.skipped_samples = 0
        self.records_skipped: dict[str, int] = {}  # per split, records the readers dropped
        self.truncated_texts = 0
        # The first training loss and a running mean of the losses, for the divergence check.
        self.loss_history: dict[str, float | None] = {"first": None, "mean": None}
        self._configured = False

    # ------------------------------------------------- compilation, sharding
    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks: the units of compilation, sharding and activation checkpointing."""
        return [*self.model.vision.vit.blocks, *self.model.decoder.layers]

    def configure_model(self) -> None:
        """Called by Lightning on every process before the optimiser is built (once per module).

        Under ``ModelParallelStrategy`` (configs/strategy/fsdp2.yaml) the blocks, then the
        model and any other child module, are sharded over the data-parallel ranks with FSDP2.
        """
        if self._configured:
            return
        self._configured = True
        if self.hparams.compile:
            for block in self.transformer_blocks():
                block.compile()
        if self.device_mesh is not None:
            entry_points = {self.model: ["encode_image", "encode_image_with_layers", "image_embedding",
                                         "text_embedding", "caption_logits"]}
            sharding.shard(self, self.transformer_blocks(), self.device_mesh["data_parallel"], entry_points)

    # Evaluation and prediction call model methods that FSDP2's hooks do not see (see
    # ``sharding.hold_full_weights``): under FSDP2 each rank holds the full weights for the
    # duration of an evaluation batch. Subclasses that override these hooks call super().
    def _hold_full_weights(self, hold: bool) -> None:
        if self.device_mesh is not None:
            sharding.hold_full_weights(self, hold)

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(True)

    def on_validation_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(False)

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(True)

    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(False)

    def on_predict_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(True)

    def on_predict_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Under Lightning's FSDPStrategy (FSDP1) the Trainer cannot clip by norm: the norm spans
        # every rank's shard, and only FSDP's root module can compute it.
        model = self.trainer.model
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and isinstance(model, torch.distributed.fsdp.FullyShardedDataParallel)):
            model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def empty_inputs(self) -> tuple[Tensor, Tensor]:
        """Images (0, 3, S, S) and tokens (0, T): what a rank whose samples were all bad feeds
        the model, so that it still joins the other ranks' collectives."""
        c = self.architecture
        return (torch.zeros(0, 3, c.image_size, c.image_size, device=self.device),
                torch.zeros(0, c.context_length, dtype=torch.long, device=self.device))

    def add_task_modules(self) -> None:
        """Where a task adds its own modules (a head, a PEFT prefix), so that ``init_from``
        and ``freeze`` see them. ``self.hparams`` holds the task's arguments already."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, without running code and without reading the
        checkpoint's ``init_from`` again: the checkpoint already holds every weight."""
        kwargs.setdefault("weights_only", True)
        kwargs["init_from"] = None
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ---------------------------------------------------------------- weights
    def load_weights(self, path: str, strict: bool = False) -> None:
        """Copy matching parameters from a checkpoint; report what did not match."""
        state = read_state_dict(path, purpose="init_from")
        own = self.state_dict()
        # A single number may be stored with shape () (older checkpoints) or (1,).
        loadable = {k: v.reshape(own[k].shape) for k, v in state.items()
                    if k in own and (own[k].shape == v.shape or own[k].numel() == v.numel() == 1)}
        missing = sorted(set(own) - set(loadable))
        mismatched = sorted(k for k in state if k in own and k not in loadable)
        if strict and missing:
            raise ValueError(f"{path}: {len(missing)} parameters missing or of another shape, e.g. {missing[:5]}")
        if not loadable:
            raise ValueError(f"{path}: no parameter matches this model by name and shape")
        self.load_state_dict(loadable, strict=False)
        log.info("loaded %d tensors from %s; %d kept their initialisation%s", len(loadable), path, len(missing),
                 f"; shapes differ for {mismatched}" if mismatched else "")

    def freeze_matching(self, patterns: list[str]) -> None:
        frozen = 0
        for name, parameter in self.named_parameters():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                parameter.requires_grad_(False)
                frozen += 1
        if frozen == 0:
            raise ValueError(f"freeze patterns {patterns} match no parameter")
        self.train(self.training)  # frozen batch norms stop updating their statistics now

    def train(self, mode: bool = True) -> MammutModule:
        """Train mode, except for the batch norms whose weights are frozen: their running statistics
        stay as loaded too, so a frozen backbone (e.g. a conv stem under PEFT) does not drift."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and not any(
                        p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def lr_scale(self, name: str) -> float:
        for pattern, scale in (self.hparams.lr_scales or {}).items():
            if fnmatch.fnmatch(name, pattern):
                return scale
        return 1.0

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total), counting tied weights once."""
        unique = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            # Norm scales, biases, embeddings and the temperature are not weight-decayed.
            decayed = not (parameter.ndim < 2 or "embedding" in name or "pos_embed" in name or "cls_token" in name)
            groups.setdefault((decayed, self.lr_scale(name)), []).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": params, "weight_decay": self.hparams.weight_decay if decayed else 0.0,
              "lr": self.hparams.lr * scale, "name": _group_name(decayed, scale), "decayed": decayed,
              "lr_scale": scale}
             for (decayed, scale), params in sorted(groups.items(), key=lambda group: (not group[0][0], group[0][1]))],
            lr=self.hparams.lr, betas=self.hparams.betas,
        )
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.hparams.warmup_steps, total, self.hparams.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        self.apply_optimizer_settings()

    def apply_optimizer_settings(self) -> None:
        """Make the optimiser follow this run's settings after a resume.

        Restoring a checkpoint restores its optimiser and schedule too, with the learning rate,
        weight decay and betas of the run that wrote it. The settings given now win (a lower
        ``--model.lr`` is the usual cure for a diverging run); each change is logged.
        """
        h = self.hparams
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for index, group in enumerate(scheduler.optimizer.param_groups):
                wanted = {"initial_lr": h.lr * group.get("lr_scale", 1.0), "betas": tuple(h.betas),
                          "weight_decay": h.weight_decay if group.get("decayed", True) else 0.0}
                changed = {k: (group.get(k), v) for k, v in wanted.items() if _differs(group.get(k), v)}
                if changed:
                    log.info("optimiser group %s follows this run's settings: %s", group.get("name", index),
                             ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
                group.update(wanted)
                if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                    # The schedule as this run defines it (its length follows max_steps too).
                    scheduler.base_lrs[index] = wanted["initial_lr"]
                    group["lr"] = wanted["initial_lr"] * scheduler.lr_lambdas[index](scheduler.last_epoch)

    # --------------------------------------------------------------- logging
    def on_fit_start(self) -> None:
        # Printed at the start of every fit: how much of the model this run trains (PEFT: under 1%).
        trainable, total = self.parameter_counts()
        if self.trainer.is_global_zero:
            print(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)", flush=True)

    def count_skipped(self, num_skipped: int) -> None:
        """Bad samples dropped by the data pipeline are counted and logged, never hidden.

        ``data/skipped_samples`` counts every skip of the run: the samples that training and
        evaluation steps dropped, each time one meets them (``skipped_samples``, kept in
        checkpoints), plus the records the readers dropped from each split whose loop has run
        (``records_skipped``, once per run: a resumed run reads the files again). The sanity
        check's batches are not counted: the first validation meets them again.
        """
        if self.trainer.sanity_checking:
            return
        self._count_records_skipped()
        self.skipped_samples += num_skipped
        total = self.skipped_samples + sum(self.records_skipped.values())
        if num_skipped:
            log.warning("skipped %d bad samples so far", total)
        self.log("data/skipped_samples", float(total), reduce_fx="max")

    def count_truncated(self, truncated: list[str]) -> None:
        """Texts cut to fit the context length are counted and logged; the first one is named."""
        if self.trainer.sanity_checking:
            return
        if truncated and not self.truncated_texts:
            log.warning("%s; texts cut to fit are counted in data/truncated_texts", truncated[0])
        self.truncated_texts += len(truncated)
        self.log("data/truncated_texts", float(self.truncated_texts), reduce_fx="max")

    def _count_records_skipped(self) -> None:
        """Take in what the readers dropped from the split that this loop runs on. Assigned, not
        added: a split counts once however many epochs it runs, and once in a resumed run."""
        split = "train" if self.trainer.training else "val" if self.trainer.validating else "test"
        datamodule = getattr(self.trainer, "datamodule", None)
        self.records_skipped[split] = getattr(datamodule, "records_skipped", {}).get(split, 0)

    def check_finite(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        """Stop before a non-finite or diverging loss reaches the weights.

        Every rank decides on the largest loss of all ranks, so that they stop together rather
        than leave the others waiting in a collective. A finite loss counts as diverging when it
        exceeds ``divergence_factor`` times the larger of the run's first loss and its running
        mean: a loss that far above where training started is an explosion, not a hard batch,
        and stopping at once keeps its weights out of the checkpoints written from then on.
        """
        local = loss.detach().float()
        worst = local if torch.isfinite(local) else torch.full_like(local, math.inf)
        if self.trainer.world_size > 1:
            worst = self.trainer.strategy.reduce(worst, reduce_op="max")
        worst = float(worst)
        detail = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items())
        where = f"at global step {self.global_step} (epoch {self.current_epoch})"
        if not math.isfinite(worst):
            raise FloatingPointError(
                f"non-finite loss {where}: {detail}{'' if torch.isfinite(local) else ' on this rank'}. "
                f"The weights were not updated; resume from the last checkpoint with a lower lr "
                f"(--model.lr=...) or fix the data.")
        factor = self.hparams.get("divergence_factor")
        reference = max(self.loss_history["first"] or 0.0, self.loss_history["mean"] or 0.0)
        if factor and reference > 0 and worst > factor * reference:
            raise FloatingPointError(
                f"diverging loss {where}: {worst:.4g}, over {factor:g} times the reference {reference:.4g} "
                f"(the larger of the first loss and the running mean; {detail} on this rank). The weights were "
                f"not updated by this step, but the step before produced them: a checkpoint of step "
                f"{self.global_step} may hold them. Resume from an earlier one (the recipes keep "
                f"the previous checkpoint too) with a lower lr (--model.lr=...), or raise "
                f"--model.divergence_factor.")
        if worst > 0:
            history = self.loss_history
            history["first"] = history["first"] or worst
            history["mean"] = worst if history["mean"] is None else (
                LOSS_MEAN_DECAY * history["mean"] + (1 - LOSS_MEAN_DECAY) * worst)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipped_samples"] = self.skipped_samples
        checkpoint["truncated_texts"] = self.truncated_texts
        checkpoint["loss_history"] = dict(self.loss_history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        self.truncated_texts = checkpoint.get("truncated_texts", 0)
        self.loss_history = {**self.loss_history, **checkpoint.get("loss_history", {})}
        # Older checkpoints hold the temperature with shape () rather than (1,).
        own, state = dict(self.named_parameters()), checkpoint.get("state_dict", {})
        for name, value in state.items():
            if name in own and own[name].shape != value.shape and own[name].numel() == value.numel() == 1:
                state[name] = value.reshape(own[name].shape)


def _group_name(decayed: bool, scale: float) -> str:
    """``decay`` / ``no_decay``, with the lr multiplier when it is not 1 (LearningRateMonitor tags)."""
    return ("decay" if decayed else "no_decay") + ("" if scale == 1.0 else f"_x{scale:g}")


def _differs(old, new) -> bool:
    if isinstance(new, tuple):
        return old is None or tuple(old) != new
    return old is None or not math.isclose(old, new, rel_tol=1e-12, abs_tol=0.0)


def warmup_cosine(step: int, warmup: int, total: int | float, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if not math.isfinite(total) or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
