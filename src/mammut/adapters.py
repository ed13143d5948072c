"""Adapter-only checkpoints: the trained parameters of a parameter-efficient run, and a reference
to the base weights they adapt.

A PEFT run trains well under 1% of the weights (LoRA adapters, an eP-ALM prefix); the rest is
its ``init_from`` file, unchanged. With ``adapter_checkpoints: true`` a checkpoint keeps only
what was trained (and what the base file did not fill, such as a video path frozen at its
initialisation), plus the base file's path and SHA-256, so an adapter is small to share.
Restoring one loads the base first, from ``init_from`` if given or else from the recorded path,
and refuses a base whose hash differs: an adapter on the wrong base gives wrong answers without
any other sign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor

HASH_CHUNK = 1 << 24  # bytes read at a time while hashing


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BaseWeights:
    """The weights file an adapter was trained on."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> BaseWeights:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"init_from: no such file {file}")
        return cls(str(file.resolve()), file_sha256(file))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> BaseWeights | None:
        reference = checkpoint.get("base_weights")
        return cls(**reference) if reference else None

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def check_same(self, other: BaseWeights) -> None:
        """Fail, naming both files, unless ``other`` is the same base (by content, wherever it lies)."""
        if other.sha256 != self.sha256:
            raise ValueError(
                f"this adapter was trained on the base weights {self.path} (sha256 {self.sha256[:16]}...), "
                f"but the model's init_from is {other.path} (sha256 {other.sha256[:16]}...), another file: "
                "an adapter only works on its own base. Pass --model.init_from=<the adapter's base>.")


def is_adapter_checkpoint(checkpoint: dict) -> bool:
    return "base_weights" in checkpoint


def adapter_state(state: dict[str, Tensor], trained: set[str],
                  not_in_base: Callable[[str], bool]) -> dict[str, Tensor]:
    """The part of a full state dict an adapter checkpoint keeps: the ``trained`` tensors (adapters,
    prefix, task heads and their buffers) and every tensor the base file did not fill."""
    return {name: value for name, value in state.items() if name in trained or not_in_base(name)}

