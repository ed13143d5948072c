"""MammutModule: the one LightningModule that holds the shared encoder-decoder.

Everything every task needs lives here: building the model, AdamW with warmup and cosine
decay, freezing by name pattern, loading (partial) weights, compilation and FSDP2 sharding,
the non-finite loss guard and the common logging. A task subclasses it and adds its loss,
metrics and a light head.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from mammut import sharding
from mammut.model import GenerationConfig, Mammut, MammutConfig

log = logging.getLogger(__name__)


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
                .safetensors file. Parameters are matched by name and shape.
            init_strict: fail if any parameter of the model is not found with its shape in
                ``init_from``; otherwise the missing ones keep their initialisation and are listed.
            grad_checkpointing: recompute each transformer block's activations in the backward
                pass, which saves memory for about a third more compute. Works under DDP and
                FSDP2; with ``configs/strategy/fsdp.yaml``, which checkpoints through the
                strategy instead, leave it off.
            compile: ``torch.compile`` each transformer block (in ``configure_model``, before
                sharding); the first steps are slow while it compiles.
            generation: decoding settings used in evaluation and prediction.
        """
        super().__init__()
        self.save_hyperparameters()
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

    # ---------------------------------------------------------------- weights
    def load_weights(self, path: str, strict: bool = False) -> None:
        """Copy matching parameters from a checkpoint; report what did not match."""
        state = read_state_dict(path)
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
              "lr": self.hparams.lr * scale, "name": _group_name(decayed, scale)}
             for (decayed, scale), params in sorted(groups.items(), key=lambda group: (not group[0][0], group[0][1]))],
            lr=self.hparams.lr, betas=self.hparams.betas,
        )
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.hparams.warmup_steps, total, self.hparams.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --------------------------------------------------------------- logging
    def on_fit_start(self) -> None:
        # Printed at the start of every fit: how much of the model this run trains (PEFT: under 1%).
        trainable, total = self.parameter_counts()
        if self.trainer.is_global_zero:
            print(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)", flush=True)

    def count_skipped(self, num_skipped: int) -> None:
        """Bad samples dropped by the data pipeline are counted and logged, never hidden."""
        if num_skipped:
            self.skipped_samples += num_skipped
            log.warning("skipped %d bad samples so far", self.skipped_samples)
        self.log("data/skipped_samples", float(self.skipped_samples), reduce_fx="max")

    def check_finite(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        """Stop before a non-finite loss reaches the weights, so the checkpoints stay usable."""
        if torch.isfinite(loss):
            return
        detail = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items())
        raise FloatingPointError(
            f"non-finite loss at global step {self.global_step} (epoch {self.current_epoch}): {detail}. "
            f"The weights were not updated; resume from the last checkpoint with a lower lr or fix the data.")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipped_samples"] = self.skipped_samples

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        # Older checkpoints hold the temperature with shape () rather than (1,).
        own, state = dict(self.named_parameters()), checkpoint.get("state_dict", {})
        for name, value in state.items():
            if name in own and own[name].shape != value.shape and own[name].numel() == value.numel() == 1:
                state[name] = value.reshape(own[name].shape)


def _group_name(decayed: bool, scale: float) -> str:
    """``decay`` / ``no_decay``, with the lr multiplier when it is not 1 (LearningRateMonitor tags)."""
    return ("decay" if decayed else "no_decay") + ("" if scale == 1.0 else f"_x{scale:g}")


def warmup_cosine(step: int, warmup: int, total: int | float, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if not math.isfinite(total) or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def read_state_dict(path: str) -> dict[str, Tensor]:
    """A state dict from a Lightning checkpoint, a torch state dict or a .safetensors file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"init_from: no such file {path}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return state
