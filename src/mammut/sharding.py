"""FSDP2 (torch ``fully_shard``) for a MammutModule under Lightning's ``ModelParallelStrategy``.

Each transformer block becomes one FSDP unit: its weights are all-gathered just before it runs
and freed after. Then the model and each module of a task that holds parameters (a head, a
PEFT prefix) is sharded as a root, which covers the remaining weights: the
embeddings, norms and projections, the tied token embedding and output projection included
(both sit in the same unit, so they stay one parameter). The LightningModule itself is not
sharded: its metrics and other state are not parameters and must stay plain tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method


def shard(roots: list[nn.Module], blocks: list[nn.Module], mesh: DeviceMesh,
          entry_points: dict[nn.Module, list[str]] | None = None) -> None:
    """Shard ``blocks``, then each of ``roots`` that holds parameters, over ``mesh``.

    ``entry_points`` names methods other than ``forward`` that evaluation calls first on a
    root (``encode_image``, ...): FSDP runs its root set-up and gathers the root's weights
    for them as for ``forward``.
    """
    for block in blocks:
        fully_shard(block, mesh=mesh)
    for root in roots:
        if next(root.parameters(), None) is not None:
            fully_shard(root, mesh=mesh)
    for root, names in (entry_points or {}).items():
        for name in names:
            register_fsdp_forward_method(root, name)


def hold_full_weights(module: nn.Module, hold: bool) -> None:
    """Keep every rank's full weights in place (``hold=True``) until released (``hold=False``).

    Evaluation calls methods other than ``forward`` (``encode_image``, incremental decoding),
    which FSDP's hooks do not see, so for the duration of an evaluation batch every FSDP unit
    is gathered and kept gathered. Releasing restores the sharding and FSDP's defaults:
    reshard after forward, except for the roots whose weights backward needs right away.
    """
    for unit, is_root in _fsdp_units(module):
        if hold:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        else:
            unit.reshard()
            unit.set_reshard_after_forward(not is_root, recurse=False)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in module.modules())


def _fsdp_units(module: nn.Module, under_unit: bool = False) -> Iterator[tuple[FSDPModule, bool]]:
    """Every FSDP unit below ``module``, with whether it is a root (no unit above it)."""
    if isinstance(module, FSDPModule):
        yield module, not under_unit
        under_unit = True
    for child in module.children():
        yield from _fsdp_units(child, under_unit)


class ShardingHooks:
    """The LightningModule hooks of a MammutModule (``self.model``, ``self.tasks``) for compilation
    and sharding: each transformer block compiled and, under ``ModelParallelStrategy``
    (configs/strategy/fsdp2.yaml), sharded over the data-parallel ranks with FSDP2; the full
    weights held for each evaluation and prediction batch; clipping under FSDP1."""

    compile_blocks = False  # set by the module: torch.compile each transformer block
    _configured = False

    def configure_model(self) -> None:
        """Called by Lightning on every process before the optimiser is built (once per module)."""
        if self._configured:
            return
        self._configured = True
        blocks = self.model.transformer_blocks()
        if self.compile_blocks:
            for block in blocks:
                block.compile()
        if self.device_mesh is not None:
            roots = [self.model, *(child for task in self.tasks.values() for child in task.children())]
            entry_points = {self.model: list(self.model.fsdp_entry_points)}
            for task in self.tasks.values():
                entry_points.update(task.fsdp_entry_points())
            shard(roots, blocks, self.device_mesh["data_parallel"], entry_points)

    # Evaluation and prediction call model methods that FSDP2's hooks do not see (see
    # ``hold_full_weights``): under FSDP2 each rank holds the full weights for an evaluation batch.
    def _hold_full_weights(self, hold: bool) -> None:
        if self.device_mesh is not None:
            hold_full_weights(self, hold)

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
