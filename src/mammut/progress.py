"""Progress for a run whose output goes to a file: one plain line per logging interval.

A progress bar redraws itself with carriage returns, which a log file (``make pretrain > train.log``,
a cluster job's stdout) keeps as thousands of fragments. Off a terminal the CLI uses
:class:`LineProgress` instead, unless the user chose a progress bar (or none) themselves.
"""

from __future__ import annotations

import math
import sys
import time

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar


class LineProgress(ProgressBar):
    """Prints ``step 250/800 (epoch 1) | train/loss 3.214 | lr 1.8e-03 | 4.2 it/s | eta 3m10s`` every
    ``trainer.log_every_n_steps`` optimizer steps, and a line at the end of each validation.

    Being a ``ProgressBar``, it takes the place of the one Lightning would add.
    """

    def __init__(self, every_n_steps: int | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._total = math.inf
        self._mark = (0.0, 0)  # (time, step) the speed is measured from
        self._last_step = -1
        self._train_keys: set[str] = set()
        self._started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.estimated_stepping_batches
        self._total = total if 0 < total < math.inf else math.inf
        self._mark = (time.monotonic(), trainer.global_step)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = self.every_n_steps or trainer.log_every_n_steps or 50
        if not self._enabled or step == self._last_step or (step % every and step != self._total):
            return
        self._last_step = step
        now = time.monotonic()
        rate = (step - self._mark[1]) / max(now - self._mark[0], 1e-9)
        self._mark = (now, step)
        metrics = self._metrics(trainer, pl_module)
        self._train_keys.update(metrics)
        of_total = f"/{self._total}" if self._total < math.inf else ""
        parts = [f"step {step}{of_total} (epoch {trainer.current_epoch})"]
        parts += [f"{name} {_number(value)}" for name, value in metrics.items()]
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        parts.append(f"{rate:.1f} it/s")
        if self._total < math.inf and rate > 0:
            parts.append(f"eta {_duration((self._total - step) / rate)}")
        print(" | ".join(parts), flush=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        seconds = time.monotonic() - self._started
        # The speed counts training time only: move its starting point past the validation.
        self._mark = (self._mark[0] + seconds, self._mark[1])
        where = f" at step {trainer.global_step} (epoch {trainer.current_epoch})" if trainer.state.fn == "fit" else ""
        added = {k: v for k, v in self._metrics(trainer, pl_module).items() if k not in self._train_keys}
        parts = [f"validation{where} done in {_duration(seconds)}"]
        parts += [f"{name} {_number(value)}" for name, value in added.items()]
        print(" | ".join(parts), flush=True)

    def on_test_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_test_end(self, trainer, pl_module) -> None:
        if self._enabled:
            print(f"test done in {_duration(time.monotonic() - self._started)}", flush=True)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._enabled:
            print(f"predict done in {_duration(time.monotonic() - self._started)}", flush=True)

    def _metrics(self, trainer, pl_module) -> dict:
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run's folder name, not progress
        return metrics


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (the progress bar's, stdout) is a terminal, where a redrawn bar belongs."""
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


def progress_for_log_file(trainer_config) -> list[Callback]:
    """``[LineProgress()]`` where output is not a terminal and the user left the progress bar to the
    default: neither ``enable_progress_bar`` nor ``barebones`` set, and no progress bar among the callbacks."""
    callbacks = trainer_config.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    chosen = (trainer_config.get("enable_progress_bar") is not None or trainer_config.get("barebones")
              or any(isinstance(c, ProgressBar) for c in callbacks))
    return [] if chosen or on_terminal() else [LineProgress()]
