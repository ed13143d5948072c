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
        if not names_a_global(error):
            raise _unreadable(file, error) from error
        raise CheckpointError(f"checkpoint {file} was not loaded: it holds objects other than tensors and "
                              f"plain data, and unpickling them could run code ({refusal_reason(error)})") from error
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways; each is reported with the path
        raise _unreadable(file, error) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {file} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    return checkpoint


def _unreadable(file: Path, error: Exception) -> CheckpointError:
    reason = refusal_reason(error) if isinstance(error, pickle.UnpicklingError) else f"{type(error).__name__}: {error}"
    return CheckpointError(f"checkpoint {file} is unreadable, probably truncated or corrupt ({reason}). Resume from "
                           f"another checkpoint in {file.parent}: the recipes keep the previous one as well.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with an atomic local save and a safe, path-naming load.

    Remote paths (``s3://``, ...) are left to Lightning, whose object-store writes are atomic.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options}")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = staging_path(path)
        with open(staged, "wb") as file:
            # Serialised in memory first (as Lightning does), then written in chunks.
            buffer = _serialise(checkpoint)
            for start in range(0, len(buffer), WRITE_CHUNK):
                file.write(buffer[start:start + WRITE_CHUNK])
            file.flush()
            os.fsync(file.fileno())
        os.replace(staged, path)
        _sync_directory(path.parent)  # makes the rename itself durable

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)
        if weights_only is False:
            log.warning("checkpoint %s: loading with weights_only=True regardless of the request", path)
        return read_checkpoint(path, map_location=map_location or (lambda storage, loc: storage))


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
