"""Reading weights files without running code.

A torch file is a pickle, and unpickling can run any code the file names. Every weights file
the project reads (``init_from``, ``vision_weights``) goes through ``read_state_dict``: a
``.safetensors`` file holds tensors only, and a torch file is unpickled with
``weights_only=True``, which admits tensors, numbers, strings and plain containers and
refuses everything else before it is built.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import Tensor


class UnsafeWeightsError(ValueError):
    """A weights file holds more than tensors and plain data; reading it could run code."""


def read_state_dict(path: str | os.PathLike, purpose: str = "weights") -> dict[str, Tensor]:
    """The tensors of a Lightning checkpoint (its ``state_dict``), a torch state dict or a
    ``.safetensors`` file. ``purpose`` names the setting the path came from, for messages."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{purpose}: no such file {file}")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{purpose}: cannot read {file} ({error})") from error
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not names_a_global(error):
            raise ValueError(f"{purpose}: cannot read {file}: not a complete torch file ({refusal_reason(error)})") from error
        raise UnsafeWeightsError(
            f"{purpose}: {file} was not loaded: it holds objects other than tensors and plain data, and "
            f"unpickling them could run code ({refusal_reason(error)}). If you trust its source, re-save its state dict "
            f"with torch.save(state_dict, path) or as .safetensors.") from error
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways; each is reported with the path
        raise ValueError(f"{purpose}: cannot read {file}: not a complete torch file "
                         f"({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{purpose}: {file} holds no state dict of tensors")
    return state


def names_a_global(error: pickle.UnpicklingError) -> bool:
    """Whether ``weights_only`` refused a class or function the file names (what a pickle that
    runs code needs), rather than bytes that are no pickle at all."""
    return "Unsupported global" in str(error)


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's long refusal message that says what the file holds."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else repr(error))
    return reason if len(reason) <= 300 else reason[:300] + "..."  # a damaged file can name a huge "global"
