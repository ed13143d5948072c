"""Two CPU processes joined by gloo, as the ranks of a data-parallel job: a function, or a `mammut fit` run;
the strategies of configs/strategy/."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
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
    """``function(rank, *args)`` on ranks 0 and 1 (a picklable, module-level function), each forked
    from the server process of ``forkserver()``; returns what each rank returned, in rank order."""
    forkserver()
    mp.start_processes(_run_rank, args=(function, str(folder), args), nprocs=2, start_method="forkserver")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def forkserver() -> multiprocessing.context.ForkServerContext:
    """Processes forked from a fresh server that has imported torch, Lightning and mammut once for
    all the ranks this test process starts (seconds of imports per rank otherwise), and that has
    run nothing: no threads to inherit, unlike a fork of the test process itself."""
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed", "lightning", "mammut.cli"])
    return multiprocessing.get_context("forkserver")


def _run_rank(rank: int, function, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        torch.save(function(rank, *args), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def fit_on_two_processes(data_root: Path, out: Path, strategy: str, *overrides: str, timeout: float = 240,
                         config: str | list[str] = "configs/pretrain.yaml", launcher: str = "external") -> None:
    """``mammut fit`` of ``config`` with a tiny model on two CPU processes, launched by ``launcher``
    (``mammut_on_processes``), with ``configs/strategy/<strategy>.yaml``; validation is off."""
    arguments = [
        "fit",
        *(argument for c in ([config] if isinstance(config, str) else config) for argument in ("--config", str(REPO / c))),
        "--config", str(REPO / "configs/strategy" / f"{strategy}.yaml"), *TINY_MODEL,
        *data_arguments(data_root, joint="multitask" in str(config), batch_size=4), "--trainer.limit_val_batches=0",
        "--trainer.precision=32-true", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        "--trainer.accelerator=cpu", "--trainer.devices=2",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *overrides,
    ]
    result = mammut_on_processes(arguments, 2, out / "stderr.txt", timeout, launcher)
    assert result.returncode == 0, result.stderr[-4000:]


def mammut_on_processes(arguments: list[str], processes: int, output: Path, timeout: float,
                        launcher: str = "external") -> subprocess.CompletedProcess:
    """``mammut <arguments>`` on ``processes`` CPU processes of one thread each (they share the test
    machine's cores); every rank's output, stdout and stderr, in ``output`` and the result's stderr.

    ``launcher="lightning"``: one ``python -m mammut.cli`` process, which Lightning's launcher runs
    again for each further rank, as ``mammut fit --trainer.devices=N`` runs for a user.
    ``"external"``: every rank started at once and told its rank as torchrun or a cluster's
    scheduler tells it (LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each forked from
    ``forkserver()``, not a fresh interpreter.
    """
    if launcher not in ("lightning", "external"):
        raise ValueError(f"launcher must be 'lightning' or 'external', got {launcher!r}")
    if launcher == "lightning":
        env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-m", "mammut.cli", *arguments], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=timeout)
        output.write_text(result.stderr)
        return result
    port = _free_port()
    logs = [output.with_name(f"{output.name}.rank{rank}") for rank in range(processes)]
    ranks = [forkserver().Process(target=_mammut_rank, args=(rank, processes, port, arguments, str(log)))
             for rank, log in enumerate(logs)]
    for rank in ranks:
        rank.start()
    deadline = time.monotonic() + timeout
    for rank in ranks:
        rank.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank in ranks if rank.is_alive()]
    for rank in hung:
        rank.kill()
        rank.join()
    text = "".join(log.read_text() if log.exists() else "" for log in logs)
    output.write_text(text)
    if hung:
        raise subprocess.TimeoutExpired(["mammut", *arguments], timeout, stderr=text)
    returncode = next((rank.exitcode for rank in ranks if rank.exitcode), 0)
    return subprocess.CompletedProcess(["mammut", *arguments], returncode, "", text)


def _mammut_rank(rank: int, processes: int, port: int, arguments: list[str], log: str) -> None:
    with open(log, "w") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    os.chdir(REPO)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    if processes > 1:
        os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(processes),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from mammut.cli import main
    main(arguments)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
