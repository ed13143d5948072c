"""How a run stops without losing its progress and without saving broken weights.

- ``CheckpointsBehindTheGuard``: every checkpoint is written one step late. A save holds the
  weights after an optimiser step; whether they are sound shows only in the next step's loss,
  which the loss guard (``mammut.loss_guard``) checks before the weights change again. So saves
  are serialised when Lightning makes them but written only once the next loss has passed the
  guard, and dropped if it fails: no checkpoint ever holds weights that the step after them
  finds non-finite or diverging. At the end of training, or when a run stops for another
  reason, what is held is written if every parameter is finite.
- ``SaveOnSignal``: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) stop the run at the
  end of the current step, after writing ``last.ckpt`` atomically beside the run's other
  checkpoints and saying where; a second Ctrl-C stops at once. The command exits with 128 + the
  signal's number, as a process killed by it would.

``MammutModule.configure_callbacks`` adds both to every run.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mammut.checkpointing import AtomicCheckpointIO

log = logging.getLogger(__name__)


def atomic_io(trainer) -> AtomicCheckpointIO | None:
    """The trainer's ``AtomicCheckpointIO``, put in place of Lightning's default one (a user's own
    CheckpointIO stays, and then nothing is held back)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    return strategy.checkpoint_io if isinstance(strategy.checkpoint_io, AtomicCheckpointIO) else None


def weights_are_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class CheckpointsBehindTheGuard(Callback):
    """Hold every checkpoint until the next step's loss has passed the loss guard."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        io = atomic_io(trainer)
        if io is not None and stage == "fit":
            io.holding = True

    def on_train_start(self, trainer, pl_module) -> None:
        io = atomic_io(trainer)
        if io is not None and io.newest_written is None and trainer.ckpt_path:
            io.newest_written = str(trainer.ckpt_path)  # a resumed run: the checkpoint it came from

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        # The loss of the weights the held checkpoints hold has passed the guard.
        io = atomic_io(trainer)
        if io is not None:
            io.release()

    def on_train_end(self, trainer, pl_module) -> None:
        self._settle(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        io = atomic_io(trainer)
        if io is None:
            return
        if isinstance(exception, FloatingPointError):  # the guard stopped the run: the held weights are broken
            dropped = io.discard()
            if dropped:
                log.warning("not written, as they hold the weights that gave that loss: %s", ", ".join(dropped))
            return
        self._settle(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # ModelCheckpoint saves last.ckpt in its own on_train_end, which Lightning runs after every
        # other callback's: what it saved is written here.
        self._settle(trainer, pl_module)
        io = atomic_io(trainer)
        if io is not None:
            io.holding = False

    @staticmethod
    def _settle(trainer, pl_module) -> None:
        """Write what is held if the weights are finite; no later step will check them."""
        io = atomic_io(trainer)
        if io is None or not io.pending:
            return
        if weights_are_finite(pl_module):
            io.release()
        else:
            log.warning("not written, as the weights they hold are not finite: %s", ", ".join(io.discard()))


class SaveOnSignal(Callback):
    """On SIGINT or SIGTERM, write ``last.ckpt`` at the end of the step and stop the run."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None  # the signal that asked to stop
        self.saved: str | None = None
        self._previous: dict[int, object] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = number
        print(f"\n{signal.Signals(number).name}: stopping at the end of this step, after saving last.ckpt "
              "(Ctrl-C again to stop at once, without saving)", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        received = self.received or 0
        if trainer.world_size > 1:  # every rank stops at the same step, and saves together
            received = int(trainer.strategy.reduce(torch.tensor(float(received), device=pl_module.device),
                                                   reduce_op="max"))
        if received:
            self.received = received
            self._save(trainer, pl_module)
            trainer.should_stop = True

    def _save(self, trainer, pl_module) -> None:
        """Write ``last.ckpt`` now (at a step's end), after what was held, and say where."""
        path = last_checkpoint_path(trainer)
        if weights_are_finite(pl_module):
            io = atomic_io(trainer)
            if io is not None:
                io.release()  # the held saves are older than this one
            trainer.save_checkpoint(path)
            if io is not None:
                io.release()  # written now: no later step will check these weights
            self.saved = str(path)
            message = f"saved {path} at step {trainer.global_step}; resume with --ckpt_path={path}"
        else:
            message = "the weights are not finite: nothing saved"
        if trainer.is_global_zero:
            print(f"{signal.Signals(self.received).name}: {message}", flush=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)
        # Lightning ends a run on SIGTERM itself, between two steps, by a SystemExit with no code (0):
        # save if this step's end came too late for it, and exit as the signal would.
        if isinstance(exception, SystemExit) and self.received:
            if self.saved is None:
                self._save(trainer, pl_module)
            exception.code = self.exit_code

    @property
    def exit_code(self) -> int | None:
        """128 + the signal's number when a signal stopped the run."""
        return None if self.received is None else 128 + self.received


def last_checkpoint_path(trainer) -> Path:
    """``last.ckpt`` in the folder of the run's first ModelCheckpoint, else in the log folder's checkpoints/."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / "last.ckpt"
