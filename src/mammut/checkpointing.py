"""Checkpoint files that survive a kill at any moment and never run code when read.

Lightning writes a checkpoint through fsspec, which stages it in the system's temporary
directory and then moves it into place. When that directory is on another filesystem (a
node-local ``/tmp`` on a cluster), the move is a copy, and a job killed during it leaves a
truncated checkpoint in place of the last good one. ``AtomicCheckpointIO`` stages the file
next to its destination instead, flushes it to disk and renames it over the old one: a rename
within one directory is atomic, so the path holds either the old checkpoint or the new one.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mammut.model.weights_file import names_a_global, refusal_reason

log = logging.getLogger(__name__)

# Bytes written per call while staging a checkpoint.
WRITE_CHUNK = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names it."""


def staging_path(path: Path) -> Path:
    """Where a checkpoint is written before it replaces ``path``: beside it, hidden."""
    return path.with_name(f".{path.name}.partial")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint, unpickled with ``weights_only=True``; errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file}: no such file")
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # ``from None``: torch's own message advises loading the file unsafely.
        if not names_a_global(error, file):
            raise _unreadable(file, error) from None
        raise CheckpointError(f"checkpoint {file} was not loaded: it holds objects other than tensors and plain "
                              f"data, and unpickling them could run code ({refusal_reason(error, file)})") from None
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways; each is reported with the path
        raise _unreadable(file, error) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {file} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    return checkpoint


def _unreadable(file: Path, error: Exception) -> CheckpointError:
    reason = refusal_reason(error, file) if isinstance(error, pickle.UnpicklingError) else \
        f"{type(error).__name__}: {error}"
    return CheckpointError(f"checkpoint {file} is unreadable, probably truncated or corrupt ({reason}). Resume from "
                           f"another checkpoint in {file.parent}: the recipes keep the previous one as well.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with an atomic local save, a safe, path-naming load, and
    writes that can be held back until the weights they hold have proved sound.

    While ``holding``, a save is serialised at once (the weights as they are now) but written only
    by ``release()``, and a removal waits with it; ``discard()`` drops both. ``mammut.stopping``
    holds every save until the next training step's loss has passed the loss guard, so that no
    checkpoint is ever written from weights that step finds non-finite or diverging.
    Remote paths (``s3://``, ...) are written through fsspec; object-store writes are atomic.
    """

    def __init__(self):
        super().__init__()
        self.holding = False
        self.pending: list[tuple[str, Path | str, memoryview | None]] = []  # ("save" | "remove", path, bytes)
        self.newest_written: str | None = None  # the newest checkpoint on disk

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options}")
        # Serialised in memory first (as Lightning does): the weights as they are at this call.
        self._do("save", path, _serialise(checkpoint))

    def remove_checkpoint(self, path: _PATH) -> None:
        self._do("remove", path, None)

    def _do(self, action: str, path: _PATH, buffer: memoryview | None) -> None:
        if self.holding:
            self.pending.append((action, path, buffer))
        else:
            self._apply(action, path, buffer)

    def release(self) -> list[str]:
        """Write (and remove) what was held, in order; returns the paths written."""
        pending, self.pending = self.pending, []
        for action, path, buffer in pending:
            self._apply(action, path, buffer)
        return [str(path) for action, path, _ in pending if action == "save"]

    def discard(self) -> list[str]:
        """Drop what was held; returns the paths that are not written."""
        pending, self.pending = self.pending, []
        return [str(path) for action, path, _ in pending if action == "save"]

    def _apply(self, action: str, path: _PATH, buffer: memoryview | None) -> None:
        if action == "remove":
            super().remove_checkpoint(path)
            return
        if _is_local(path):
            _write_atomically(Path(path), buffer)
        else:
            fs, _ = url_to_fs(str(path))
            fs.makedirs(os.path.dirname(str(path)), exist_ok=True)
            with fs.open(str(path), "wb") as file:
                file.write(buffer)
        self.newest_written = str(path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)
        if weights_only is False:
            log.warning("checkpoint %s: loading with weights_only=True regardless of the request", path)
        return read_checkpoint(path, map_location=map_location or (lambda storage, loc: storage))


def _write_atomically(path: Path, buffer: memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_path(path)
    with open(staged, "wb") as file:
        for start in range(0, len(buffer), WRITE_CHUNK):
            file.write(buffer[start:start + WRITE_CHUNK])
        file.flush()
        os.fsync(file.fileno())
    os.replace(staged, path)
    _sync_directory(path.parent)  # makes the rename itself durable


def _serialise(checkpoint: dict[str, Any]) -> memoryview:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer()


def _is_local(path: _PATH) -> bool:
    return "::" not in str(path) and get_protocol(str(path)) == "file" and not str(path).startswith("file:")


def _sync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms and filesystems cannot open a directory
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
