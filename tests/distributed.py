"""Two CPU processes joined by gloo, as the ranks of a data-parallel job: a function, or a `mammut fit` run;
the strategies of configs/strategy/."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing, checkpoint_wrapper
from torch.distributed.fsdp import FullyShardedDataParallel
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from conftest import REPO
from tiny_run import TINY_MODEL, data_arguments


def on_two_ranks(function, folder: Path, *args) -> list:
    """``function(rank, *args)`` on ranks 0 and 1 (a picklable, module-level function); returns
    what each rank returned, in rank order.

    The ranks are forked from a fresh server process that has imported torch, Lightning and
    mammut once for all the calls of this test process (seconds of imports per rank otherwise),
    and that has run nothing: no threads to inherit, unlike a fork of the test process itself."""
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed", "lightning", "mammut.cli"])
    mp.start_processes(_run_rank, args=(function, str(folder), args), nprocs=2, start_method="forkserver")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def _run_rank(rank: int, function, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        torch.save(function(rank, *args), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def fit_on_two_processes(data_root: Path, out: Path, strategy: str, *overrides: str, timeout: float = 240,
                         config: str | list[str] = "configs/pretrain.yaml") -> None:
    """``mammut fit`` of ``config`` with a tiny model on two CPU processes, launched by Lightning as
    a user would launch it, with ``configs/strategy/<strategy>.yaml``; validation is off."""
    command = [
        sys.executable, "-m", "mammut.cli", "fit",
        *(argument for c in ([config] if isinstance(config, str) else config) for argument in ("--config", str(REPO / c))),
        "--config", str(REPO / "configs/strategy" / f"{strategy}.yaml"), *TINY_MODEL,
        *data_arguments(data_root, joint="multitask" in str(config), batch_size=4), "--trainer.limit_val_batches=0",
        "--trainer.precision=32-true", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        "--trainer.accelerator=cpu", "--trainer.devices=2",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *overrides,
    ]
    # Each process gets one thread: two of them share the test machine's cores.
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    (out / "stderr.txt").write_text(result.stderr)  # both ranks' whole output, for a failure's first error
    assert result.returncode == 0, result.stderr[-4000:]


def strategy_from_config(name: str) -> Strategy:
    """The Lightning strategy that ``configs/strategy/<name>.yaml`` builds."""
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    value = yaml.safe_load((REPO / "configs" / "strategy" / f"{name}.yaml").read_text())["trainer"]["strategy"]
    return parser.instantiate(parser.parse_object({"strategy": value})).strategy


def wrap_as_fsdp_config(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped the way Lightning's FSDPStrategy wraps it under ``configs/strategy/fsdp.yaml``
    (its auto-wrap units, sharding strategy and activation checkpointing), here on the CPU, which
    Lightning itself refuses for FSDP1."""
    strategy = strategy_from_config("fsdp")
    wrapped = FullyShardedDataParallel(module, sharding_strategy=strategy.sharding_strategy,
                                       device_id=torch.device("cpu"), **strategy.kwargs)
    apply_activation_checkpointing(wrapped, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   **strategy._activation_checkpointing_kwargs)
    return wrapped
