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
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from mammut.checkpointing import AtomicCheckpointIO
from mammut.module import MammutModule
from mammut.progress import progress_for_log_file
from mammut.resume import apply_checkpoint_settings


class MammutCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
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

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        data_parallel_over_every_process(trainer.strategy)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own CheckpointIO stays
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
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


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX-512 BF16 or AMX). Without them
    torch falls back to a reference kernel that is orders of magnitude slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


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


def main(args=None) -> None:
    show_package_logs()
    MammutCLI(
        MammutModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
    )


if __name__ == "__main__":
    main()
