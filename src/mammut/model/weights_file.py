"""Reading weights files without running code.

A torch file is a pickle, and unpickling can run any code the file names. Every weights file
the project reads (``init_from``, ``vision_weights``) goes through ``read_state_dict``: a
``.safetensors`` file holds tensors only, and a torch file is unpickled with
``weights_only=True``, which admits tensors, numbers, strings and plain containers and
refuses everything else before it is built.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
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
        # ``from None``: torch's own message advises loading the file unsafely.
        if not names_a_global(error, file):
            raise ValueError(f"{purpose}: cannot read {file}: not a complete torch file "
                             f"({refusal_reason(error, file)})") from None
        raise UnsafeWeightsError(
            f"{purpose}: {file} was not loaded: it holds objects other than tensors and plain data, and "
            f"unpickling them could run code ({refusal_reason(error, file)}). If you trust its source, re-save its "
            f"state dict with torch.save(state_dict, path) or as .safetensors.") from None
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways; each is reported with the path
        raise ValueError(f"{purpose}: cannot read {file}: not a complete torch file "
                         f"({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{purpose}: {file} holds no state dict of tensors")
    return state


def names_a_global(error: pickle.UnpicklingError, file: str | os.PathLike | None = None) -> bool:
    """Whether ``weights_only`` refused a class or function the file names (what a pickle that
    runs code needs), rather than bytes that are no pickle at all.

    Decided by what ``file`` holds: its pickle names a global that ``weights_only`` does not
    admit. Without the file, or where its pickle cannot be parsed, by torch's message, which
    words the refusal "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module ... is blocked".
    """
    if file is not None:
        named = unadmitted_globals(file)
        if named is not None:
            return bool(named)
    return "unsupported global" in str(error).lower()


def unadmitted_globals(file: str | os.PathLike) -> list[str] | None:
    """The classes and functions the pickle in ``file`` names that ``weights_only`` does not
    admit (torch's allow-list plus ``torch.serialization.add_safe_globals``), in file order;
    None where the file holds no pickle that can be parsed."""
    named = pickle_globals(Path(file))
    if named is None:
        return None
    admitted = _admitted_globals()
    return [name for name in dict.fromkeys(named) if name not in admitted]


def pickle_globals(file: Path) -> list[str] | None:
    """Every ``module.name`` the pickle of a torch file (its ``data.pkl``, or the pickles of the
    legacy format) refers to by GLOBAL, STACK_GLOBAL or INST, without unpickling anything."""
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                member = next((n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if member is None:
                    return None
                stream = io.BytesIO(archive.read(member))
        else:
            stream = io.BytesIO(file.read_bytes())
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    named: list[str] = []
    # The legacy format is five pickles in a row (magic number, protocol, system info, the
    # object, its storage keys) before raw tensor bytes.
    for count in range(5):
        try:
            _add_globals_of_one_pickle(stream, named)
        except Exception:  # noqa: BLE001 - the end of the pickles, or damaged bytes (what was read counts)
            return named if count or named else None
    return named


def _add_globals_of_one_pickle(stream: io.BytesIO, named: list[str]) -> None:
    pushed, memo = [], {}
    for opcode, argument, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            named.append(".".join(str(argument).split(" ", 1)))
        elif name == "STACK_GLOBAL":
            # Module and name are the two strings pushed last (directly or from the memo).
            module, qualified = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            named.append(f"{module}.{qualified}" if isinstance(module, str) and isinstance(qualified, str)
                         else "<a global the file computes>")
        elif name in ("MEMOIZE",):
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[argument] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(argument))
        elif isinstance(argument, str):
            pushed.append(argument)
        elif opcode.stack_after:
            pushed.append(None)


def _admitted_globals() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        admitted = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without it: tensors' own classes and rebuild functions
        admitted = {"collections.OrderedDict", "torch.Size", "torch.device", "torch.nn.parameter.Parameter",
                    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}
    for entry in torch.serialization.get_safe_globals():
        value = entry[0] if isinstance(entry, tuple) else entry
        admitted.add(f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}")
        if isinstance(entry, tuple) and len(entry) == 2:
            admitted.add(entry[1])
    return admitted


def refusal_reason(error: Exception, file: str | os.PathLike | None = None) -> str:
    """What the file holds that torch refused, in one line: the globals it names, or the line
    of torch's message that says it. Never torch's advice to load the file with
    ``weights_only`` off, which would run the code it refused."""
    named = unadmitted_globals(file) if file is not None else None
    if named:
        shown = ", ".join(name[:100] for name in named[:3])  # a damaged file can name a huge "global"
        return f"it names {shown}" + (f" and {len(named) - 3} more" if len(named) > 3 else "")
    lines = [_without_advice(line) for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    reason = next((line for line in lines if "global" in line.lower()), lines[0] if lines else type(error).__name__)
    return reason if len(reason) <= 300 else reason[:300] + "..."


# Lines of torch's weights_only refusal that advise rather than describe the file.
_ADVICE = ("weights only load failed", "check the documentation", "weights_only", "add_safe_globals")


def _without_advice(line: str) -> str:
    line = line.strip().removeprefix("WeightsUnpickler error:").strip()
    line = line.split(" Please use `torch.serialization", 1)[0]  # "...was not an allowed global by default. Please use ..."
    return "" if any(advice in line.lower() for advice in _ADVICE) else line
