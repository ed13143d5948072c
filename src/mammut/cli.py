"""Command line: ``mammut fit|validate|test|predict --config configs/<recipe>.yaml [--key=value ...]``.

Every constructor argument of the task (``--model.*``), the data module (``--data.*``) and the
Trainer (``--trainer.*``) can be set in YAML or overridden here; ``--print_config`` shows the
resolved configuration. The data module takes its image size and context length from the
model's architecture unless they are set for it.

Linked arguments (set once, copied to the other side; a value given for the target is replaced):
- ``data.vocab_size`` and ``data.special_token_ids`` -> ``model.architecture.vocab_size`` and its
  ``pad_id``/``bos_id``/``eos_id``: the model is sized for the tokenizer.

Strategies for several devices or nodes are in configs/strategy/ (add ``--config
configs/strategy/<name>.yaml``); the DeepSpeed ones are checked before anything is built.

Bad input ends the command with one short line, ``mammut fit: error: <reason>``, the reason a
setting or file was refused (not jsonargparse's list of every type it tried, with the whole
configuration); ``MAMMUT_TRACEBACK=1`` shows the traceback too. Other errors show their
traceback, and the same line after it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import yaml

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from mammut.machine import cpu_has_native_bf16
from mammut.module import MammutModule
from mammut.progress import progress_for_log_file
from mammut.resume import apply_checkpoint_settings
from mammut.stopping import SaveOnSignal, atomic_io


class MammutCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--restore_other_recipe", type=bool, default=False,
                            help="restore a --ckpt_path written by another task or recipe (mammut.resume)")
        parser.link_arguments("data.vocab_size", "model.init_args.architecture.vocab_size", apply_on="instantiate")
        for name in ("pad", "bos", "eos"):
            parser.link_arguments("data.special_token_ids", f"model.init_args.architecture.{name}_id",
                                  compute_fn=lambda ids, name=name: ids[name], apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        self.command_line = list(sys.argv[1:] if args is None else args if isinstance(args, (list, tuple)) else [])
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # Lightning's version lets the checkpoint's settings replace the command line's, and
        # restores init_from; see mammut.resume.
        if self.config.get("subcommand"):
            self.config = apply_checkpoint_settings(self.parser, self.config, self.config.subcommand,
                                                    self.command_line)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_deepspeed_can_run(config.trainer.strategy)
        warn_if_bf16_is_emulated(config.trainer.precision, config.trainer.accelerator)

    def before_fit(self) -> None:
        quiet_loader_resume_warning(self.datamodule)
        warn_if_the_final_state_goes_unscored(self.trainer)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        data_parallel_over_every_process(trainer.strategy)
        atomic_io(trainer)  # checkpoints written atomically and read safely; a user's own CheckpointIO stays
        return trainer

    def _instantiate_trainer(self, config, callbacks) -> L.Trainer:
        # Off a terminal (output to a log file) progress is a line per logging interval, not a redrawn bar.
        return super()._instantiate_trainer(config, callbacks + progress_for_log_file(config))


def data_parallel_over_every_process(strategy) -> None:
    """``ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)`` shards over every process.

    Lightning's "auto" means one data-parallel group per node (tensor parallelism inside the
    node); mammut uses FSDP2 data parallelism only, so with a tensor-parallel size of 1 the
    data-parallel size is the world size, known once the Trainer has counted devices and nodes.
    """
    if (isinstance(strategy, ModelParallelStrategy) and strategy._data_parallel_size == "auto"
            and strategy._tensor_parallel_size == 1):
        strategy._data_parallel_size = strategy.num_nodes * strategy.num_processes


def quiet_loader_resume_warning(datamodule) -> bool:
    """Silence Lightning's "your dataloader is not resumable" for a data module that resumes itself.

    Lightning looks for ``state_dict`` on the loaders only. mammut's data modules keep the
    epoch's position in their own state (saved in every checkpoint) and build a loader that
    skips what was done, so a mid-epoch resume continues exactly (tests/test_pretrain.py):
    the warning would be a false alarm. A data module without its own state keeps it.
    Returns whether it was silenced."""
    if type(datamodule).state_dict is L.LightningDataModule.state_dict:
        return False
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended",
                            category=PossibleUserWarning)
    return True


def warn_if_bf16_is_emulated(precision, accelerator) -> bool:
    """Warn, before anything is built, when a bf16 run will train on a CPU without native bf16.
    Returns whether it warned."""
    on_cpu = str(accelerator) == "cpu" or (str(accelerator) == "auto" and not torch.cuda.is_available())
    if not (on_cpu and "bf16" in str(precision) and not cpu_has_native_bf16()):
        return False
    logging.getLogger("mammut").warning(
        "precision %s on a CPU without native bf16 (no AVX-512 BF16 or AMX): its bf16 matmuls are emulated and "
        "run far slower than fp32. Add --trainer.precision=32-true.", precision)
    return True


def warn_if_the_final_state_goes_unscored(trainer: L.Trainer) -> bool:
    """Warn when training ends between two validations (``max_steps`` not a multiple of an int
    ``val_check_interval``): the run's last metrics would then be those of an earlier state, and its
    final weights never scored. Returns whether it warned."""
    interval = trainer.val_check_interval
    if trainer.check_val_every_n_epoch is not None or not isinstance(interval, int) or trainer.max_steps <= 0:
        return False
    batches = trainer.max_steps * trainer.accumulate_grad_batches  # the interval counts training batches
    if batches % interval == 0:
        return False
    last = (f"the last validation comes after batch {batches - batches % interval} of {batches}"
            if batches > interval else "the run never validates")
    logging.getLogger("mammut").warning(
        "max_steps %d is not a multiple of val_check_interval %d: %s, and its final weights are never scored. Set a "
        "val_check_interval that divides max_steps, or score last.ckpt afterwards with `mammut validate "
        "--ckpt_path=...`.", trainer.max_steps, interval, last)
    return True


def check_deepspeed_can_run(strategy) -> None:
    """Fail before anything is built, naming the fix, where Lightning's DeepSpeedStrategy cannot run."""
    name = strategy if isinstance(strategy, str) else getattr(strategy, "class_path", "")
    if "deepspeed" not in str(name).lower():
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"strategy {name}: Lightning's DeepSpeed strategy runs only on CUDA GPUs, and this machine has none. "
            "On CPUs use --config configs/strategy/fsdp2.yaml (sharded weights, gradients and optimiser "
            "states, like ZeRO-3) or configs/strategy/ddp.yaml; keep the DeepSpeed configs for GPU machines.")
    if importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(f"strategy {name} needs DeepSpeed, which is not installed: pip install -e '.[deepspeed]'")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, which test runners and notebooks may swap."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def show_package_logs() -> None:
    """Print the package's INFO messages (weights loaded, resuming mid-epoch) on the console, as
    Lightning prints its own; Python shows only warnings of an unconfigured logger."""
    logger = logging.getLogger("mammut")
    if not logger.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class ConfigFileError(ValueError):
    """A ``--config`` file that is not a YAML file of settings; the message names it."""


def check_config_files(args: list[str]) -> None:
    """Refuse, naming the file, a ``--config`` that is not UTF-8 text or not YAML, before
    jsonargparse reads it (its messages name neither the file nor, for binary files, the problem)."""
    for position, argument in enumerate(args):
        if argument == "--config" and position + 1 < len(args):
            value = args[position + 1]
        elif argument.startswith("--config="):
            value = argument.removeprefix("--config=")
        else:
            continue
        path = Path(value)
        if not path.is_file():
            continue  # a missing file, or YAML given inline: jsonargparse says so
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigFileError(f"--config {path}: not a text file (byte 0x{raw[error.start]:02x} at offset "
                                  f"{error.start} is not UTF-8); a config is a YAML file of settings") from None
        try:
            settings = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ConfigFileError(f"--config {path}: not valid YAML: {where}{problem}") from None
        if settings is not None and not isinstance(settings, dict):
            raise ConfigFileError(f"--config {path}: holds a {type(settings).__name__}, not settings "
                                  "(a mapping such as 'model:', 'data:', 'trainer:')")


def run_cli(args: list[str] | None = None) -> MammutCLI:
    """The command, for callers in Python (tests, notebooks): errors are raised, not printed."""
    check_config_files(list(sys.argv[1:] if args is None else args))
    show_package_logs()
    return MammutCLI(
        MammutModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The ``mammut`` command: ``run_cli``, with an error's reason printed as its last line."""
    try:
        cli = run_cli(args)
    except Exception as error:  # noqa: BLE001 - every error ends in its reason; KeyboardInterrupt stays Python's
        argv = list(sys.argv[1:] if args is None else args)
        command = f"mammut {argv[0]}" if argv and argv[0] in ("fit", "validate", "test", "predict") else "mammut"
        reason = failing_reason(error)
        expected = is_bad_input(reason)
        if not expected or os.environ.get("MAMMUT_TRACEBACK") == "1":
            traceback.print_exception(error)
        elif not isinstance(reason, ConfigFileError):  # that one says all there is
            print("(MAMMUT_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        message = str(reason) if expected else f"{type(reason).__name__}: {reason}"
        print(f"{command}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2 if expected else 1)
    stopped = signal_exit_code(cli)
    if stopped:
        sys.exit(stopped)


def signal_exit_code(cli: MammutCLI) -> int | None:
    """128 + the signal's number when SIGINT or SIGTERM stopped the run (``mammut.stopping``), as
    for a process the signal killed: a job scheduler then sees the run did not finish."""
    trainer = getattr(cli, "trainer", None)
    codes = [c.exit_code for c in (trainer.callbacks if trainer else []) if isinstance(c, SaveOnSignal)]
    return next((code for code in codes if code), None)


def failing_reason(error: BaseException) -> BaseException | str:
    """The error a user has to act on. jsonargparse wraps a class's own error (``__cause__``) in
    "Does not validate against any of the Union subtypes ...", with the whole configuration."""
    seen = set()
    while _raised_in(error, "jsonargparse") and error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    if _raised_in(error, "jsonargparse"):
        return str(error).split("\nGiven value", 1)[0]  # without the configuration's dump
    return error


def is_bad_input(reason: BaseException | str) -> bool:
    """Errors that say what is wrong with a setting or a file: ValueError (the data's
    DataFormatError, unsafe weights, jsonargparse's), OSError (missing files), mammut's own
    error classes, and any error raised by mammut's own code. The rest are shown with their traceback."""
    if isinstance(reason, str) or isinstance(reason, (ValueError, OSError)):
        return True
    return type(reason).__module__.startswith("mammut") or _raised_in(reason, *_OWN_CODE)


_OWN_CODE = (str(Path(__file__).parent), str(Path(__file__).parents[2] / "tasks"))


def _raised_in(error: BaseException, *places: str) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in a file under one of ``places``
    (folders, or a package name as a path component)."""
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    if not frames:
        return False
    file = frames[-1].filename
    return any(file.startswith(place + os.sep) if os.sep in place else f"{os.sep}{place}{os.sep}" in file
               for place in places)


if __name__ == "__main__":
    main()
