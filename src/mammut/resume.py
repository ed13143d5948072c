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

import importlib
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
        if not config[subcommand].get("restore_other_recipe"):
            check_same_recipe(checkpoint, config[subcommand], ckpt_path)
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


def check_same_recipe(checkpoint: dict, config: Namespace, ckpt_path: str) -> None:
    """Refuse, before anything is built, a checkpoint written by another task or recipe: restoring
    it would silently replace this recipe's model class, architecture, optimiser and schedule.
    Compared by class (wherever it is imported from): the model, its tasks, and the data module."""
    saved, wanted = Recipe.of_checkpoint(checkpoint), Recipe.of_config(config)
    if saved.differs_from(wanted):
        raise ValueError(
            f"--ckpt_path={ckpt_path} is a checkpoint of another recipe: it was written by {saved}, and this "
            f"command runs {wanted}. To start from its weights with this recipe's settings, use "
            f"--model.init_from={ckpt_path} instead; to restore that run here anyway (its architecture, optimiser "
            "and schedule), add --restore_other_recipe=true.")


class Recipe:
    """What a run trains: the model's class, its tasks' classes, and the data module's class."""

    def __init__(self, model: str | None, tasks: dict[str, str], data: str | None):
        self.model, self.tasks, self.data = model, tasks, data

    @classmethod
    def of_checkpoint(cls, checkpoint: dict) -> Recipe:
        hparams = checkpoint.get("hyper_parameters", {})
        recorded = checkpoint.get("recipe", {})
        # Older checkpoints name the data module only by the key its state is saved under.
        data = recorded.get("data") or next((key for key in checkpoint if key.endswith("DataModule")), None)
        return cls(hparams.get("_class_path"), _task_classes(hparams.get("tasks")), data)

    @classmethod
    def of_config(cls, config: Namespace) -> Recipe:
        model, data = config.get("model"), config.get("data")
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        return cls(model.get("class_path") if isinstance(model, Namespace) else None,
                   _task_classes(init_args.get("tasks") if init_args is not None else None),
                   data.get("class_path") if isinstance(data, Namespace) else None)

    def differs_from(self, other: Recipe) -> bool:
        def differ(a: str | None, b: str | None) -> bool:
            if a is None or b is None:
                return False
            a, b = _resolve(a), _resolve(b)
            if isinstance(a, str) or isinstance(b, str):  # known by name only
                return _name(a) != _name(b)
            return a is not b
        tasks_differ = bool(self.tasks and other.tasks) and (
            set(self.tasks) != set(other.tasks) or any(differ(self.tasks[t], other.tasks[t]) for t in self.tasks))
        return differ(self.model, other.model) or differ(self.data, other.data) or tasks_differ

    def __str__(self) -> str:
        tasks = f" (tasks {', '.join(f'{n}: {c}' for n, c in self.tasks.items())})" if self.tasks else ""
        return f"{self.model or 'a model'}{tasks} on {self.data or 'its data'}"


def _task_classes(tasks) -> dict[str, str]:
    """Task name -> class path, from a config's or a checkpoint's ``tasks`` (class_path dicts)."""
    out = {}
    for name, task in (vars(tasks) if isinstance(tasks, Namespace) else tasks or {}).items():
        path = task.get("class_path") if isinstance(task, (dict, Namespace)) else None
        if path:
            out[name] = path
    return out


def _name(value) -> str:
    return value.rpartition(".")[2] if isinstance(value, str) else value.__qualname__


def _resolve(path: str):
    """The class a class path names (a bare class name, as older checkpoints record a data module,
    stays a name); a path that no longer imports stays its text."""
    module, _, name = path.rpartition(".")
    if not module:
        return name
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return path


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
