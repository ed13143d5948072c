"""Which parameters of a run train, and what its checkpoints then hold.

- ``freeze``: glob patterns of parameter names, frozen once ``init_from`` is loaded;
- ``lora``: LoRA adapters on the shared model's linear layers (``mammut.model.lora``), added
  after freezing; the model's own weights are then frozen and the adapters and task heads train;
- ``adapter_checkpoints``: checkpoints keep only what trains, with the path and hash of the base
  weights they adapt (``mammut.adapters``); restoring one loads that base first.

A batch norm whose weights are frozen keeps its running statistics too (``hold_frozen_norms``),
so a frozen backbone (a conv stem under PEFT) does not drift.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from torch import nn

from mammut.adapters import BaseWeights, adapter_state
from mammut.model.lora import LoraConfig, add_lora, base_key

log = logging.getLogger(__name__)

# Sharding strategies, whose checkpoints and their loading adapter checkpoints do not handle.
SHARDED_CHECKPOINTS = (ModelParallelStrategy, FSDPStrategy, DeepSpeedStrategy)


class TrainedParameters:
    """Freezing, LoRA and adapter checkpoints of one module.

    Args:
        freeze: glob patterns of parameter names to freeze, e.g. ``["model.vision.*"]``.
        lora: LoRA settings, or None.
        adapter_checkpoints: save adapter-only checkpoints; needs ``init_from``, their base.
        init_from: the weights the run starts from (the base of its adapters).
    """

    def __init__(self, freeze: list[str] | None, lora: LoraConfig | None, adapter_checkpoints: bool,
                 init_from: str | None):
        self.freeze, self.lora, self.adapter_checkpoints = list(freeze or []), lora, adapter_checkpoints
        # The base an adapter checkpoint refers to; set from the checkpoint when restored without init_from.
        self.base_weights = BaseWeights.of(init_from) if adapter_checkpoints and init_from else None
        self.kept_initialisation: set[str] = set()  # what init_from did not fill: adapter checkpoints keep it

    def apply(self, module: nn.Module, model: nn.Module) -> None:
        """Freeze the matching parameters of ``module``, then add LoRA to the shared ``model``."""
        if self.freeze:
            freeze_matching(module, self.freeze)
        if self.lora:
            targets = add_lora(model, self.lora)
            hold_frozen_norms(module)
            log.info("LoRA rank %d on %d linear layers, e.g. %s", self.lora.rank, len(targets), targets[:3])

    def check_can_save(self, strategy: Strategy) -> None:
        """Fail before the first step, not at the first save, where adapter checkpoints cannot be written."""
        if not self.adapter_checkpoints:
            return
        if isinstance(strategy, SHARDED_CHECKPOINTS):
            raise ValueError(f"adapter_checkpoints works with one device or DDP, not with the sharding strategy "
                             f"{type(strategy).__name__}: set --model.adapter_checkpoints=false")
        if self.base_weights is None:
            raise ValueError("adapter_checkpoints: an adapter refers to its base weights, and this run has none; "
                             "set model.init_from (or adapter_checkpoints: false)")

    def on_save(self, checkpoint: dict, module: nn.Module, tasks: nn.Module) -> None:
        """An adapter checkpoint's state: the trained parameters, the task heads' buffers, the tokens
        training met (``mammut.model.token_use``), and what the base did not fill (e.g. a video path
        that image weights lack, frozen at its initialisation)."""
        if not self.adapter_checkpoints:
            return
        trained = {name for name, p in module.named_parameters() if p.requires_grad}
        trained |= {f"tasks.{name}" for name, _ in tasks.named_buffers()}
        trained.add(f"model.{module.model.TOKEN_USE}")  # the base's counts, and this run's on top
        checkpoint["state_dict"] = adapter_state(checkpoint["state_dict"], trained,
                                                 lambda name: base_key(name) in self.kept_initialisation)
        checkpoint["base_weights"] = self.base_weights.as_dict()

    def attach_base(self, checkpoint: dict, load: Callable[[str], object]) -> bool:
        """For an adapter checkpoint, make sure the base it was trained on is loaded (``load(path)``):
        the run's own ``init_from`` if it has one (checked by hash), or else the file the checkpoint
        names. Returns whether ``checkpoint`` is an adapter checkpoint."""
        base = BaseWeights.from_checkpoint(checkpoint)
        if base is None:
            return False
        if self.base_weights is not None:
            base.check_same(self.base_weights)
            return True
        if not Path(base.path).is_file():
            raise FileNotFoundError(f"this adapter checkpoint adapts the base weights {base.path} "
                                    f"(sha256 {base.sha256[:16]}...), which are not there: pass "
                                    "--model.init_from=<that file, wherever it is now>")
        found = BaseWeights.of(base.path)
        base.check_same(found)
        load(base.path)
        self.base_weights = found
        return True


def freeze_matching(module: nn.Module, patterns: list[str]) -> None:
    frozen = 0
    for name, parameter in module.named_parameters():
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            parameter.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise ValueError(f"freeze patterns {patterns} match no parameter")
    hold_frozen_norms(module)


def hold_frozen_norms(module: nn.Module) -> None:
    """Put the batch norms whose weights are all frozen in eval mode, so their running statistics
    stay as loaded (called again after every ``train()``)."""
    if not module.training:
        return
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.affine and not any(
                p.requires_grad for p in norm.parameters()):
            norm.eval()


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting tied weights once."""
    unique = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
