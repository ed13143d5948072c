"""How a run restored with ``--ckpt_path`` gets its model settings.

A checkpoint records the model's constructor arguments. LightningCLI builds the model of a
restored run from them, so that ``mammut validate --ckpt_path=x.ckpt`` needs no config, but
it lets them replace everything parsed, the command line included: ``--model.lr=1e-5`` on a
resume would be ignored without a word. Here the order is:

1. the config files and their defaults;
2. the checkpoint's saved arguments, which describe the run being resumed;
3. the values typed on this command line (``--model.lr=1e-5``), which win.

Every setting that steps 2 and 3 change is logged. ``init_from`` is dropped: the checkpoint
holds every weight, and the file it names may have moved, or may be someone else's file that
a shared checkpoint points to. An adapter checkpoint (``mammut.adapters``) is the exception: it
holds only the adapter, and ``init_from`` (given now, or else the one it was trained with) is
its base, which the model checks against the hash the checkpoint records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from mammut.adapters import is_adapter_checkpoint
from mammut.checkpointing import read_checkpoint

log = logging.getLogger(__name__)

# ckpt_path values that Lightning resolves itself rather than reading a file.
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")


def model_keys_on_command_line(args: Sequence[str]) -> list[str]:
    """The model arguments set on a command line, as dotted keys below ``init_args``:
    ``--model.lr=1e-5`` and ``--model.init_args.lr 1e-5`` both give ``lr``."""
    keys = []
    for arg in args:
        if not arg.startswith("--model."):
            continue
        key = arg[len("--model."):].split("=", 1)[0]
        keys.append(key[len("init_args."):] if key.startswith("init_args.") else key)
    return keys


def apply_checkpoint_settings(parser, config: Namespace, subcommand: str, args: Sequence[str]) -> Namespace:
    """The parsed config of ``subcommand``, with the model settings of its ``ckpt_path``
    applied in the order this module describes."""
    ckpt_path = config[subcommand].get("ckpt_path")
    if not ckpt_path:
        return config
    merged = config
    adapter = False
    # A sharded checkpoint is a folder, restored by its strategy: its settings are not read here.
    if ckpt_path not in LIGHTNING_CHECKPOINT_NAMES and not Path(ckpt_path).is_dir():
        checkpoint = read_checkpoint(ckpt_path)
        adapter = is_adapter_checkpoint(checkpoint)
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if hparams:
            saved = set(hparams) - {"_class_path"}
            if "_class_path" in hparams:
                hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            merged = parser.parse_object({subcommand: {"model": hparams}}, config.clone())
            # What the checkpoint does not hold (tasks given as objects are not saved) stays as
            # configured; parse_object may have reset it to its default.
            arguments = f"{subcommand}.model.init_args"
            for key in vars(config[arguments]) if arguments in config else []:
                if key not in saved:
                    merged[f"{arguments}.{key}"] = config[f"{arguments}.{key}"]
            _report_changes(config, merged, subcommand, ckpt_path, "the checkpoint's settings replace the config's")
        given = merged.clone()
        for key in model_keys_on_command_line(args):
            dotted = f"{subcommand}.model.init_args.{key}"
            if dotted in config:
                merged[dotted] = config[dotted]
        _report_changes(given, merged, subcommand, ckpt_path, "the command line's settings replace the checkpoint's")
    init_from = f"{subcommand}.model.init_args.init_from"
    if init_from in merged and merged[init_from] and not adapter:
        log.info("restoring %s: init_from=%s is not read, the checkpoint holds every weight", ckpt_path, merged[init_from])
        merged[init_from] = None
    return merged


def _report_changes(before: Namespace, after: Namespace, subcommand: str, ckpt_path: str, what: str) -> None:
    old, new = dict(_leaves(before[subcommand].model)), dict(_leaves(after[subcommand].model))
    changes = [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in new.items() if old.get(key) != value]
    if changes:
        log.info("restoring %s: %s: %s", ckpt_path, what, "; ".join(changes))


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix.removeprefix("init_args."), value
