"""Tar shards of the tiny demo world, written by `python -m mammut.data.write_shards`, and `mammut fit`
runs that train on them and record which samples each step saw."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from mammut.data.write_shards import main as write_shards

from conftest import REPO
from distributed import mammut_on_processes
from tiny_run import TINY_MODEL


def write_demo_shards(demo: Path, out: Path, samples_per_shard: int, split: str = "train", first_shard: int = 0) -> None:
    """A split of the tiny demo world as shards, by the project's own command."""
    write_shards(["--captions", str(demo / f"annotations/captions_{split}.json"), "--images", str(demo / "images" / split),
                  "--out", str(out), "--samples-per-shard", str(samples_per_shard), "--first-shard", str(first_shard)])


def shard_keys(tar: Path) -> list[str]:
    """The sample keys of a tar, in stored order, read by webdataset alone."""
    with open(tar, "rb") as stream:
        keys = [base_plus_ext(member["fname"])[0] for member in tar_file_iterator(stream)]
    return list(dict.fromkeys(keys))


class RecordBatches(Callback):
    """Appends ``{"step", "epoch", "ids", "lr", "skipped"}`` of every training batch to a JSON-lines
    file per rank, ``<path>.rank<N>``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as file:
            file.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                   "ids": batch.image_ids.tolist(), "lr": lr, "skipped": batch.num_skipped}) + "\n")


def recorded(path: Path, rank: int = 0) -> list[dict]:
    """What ``RecordBatches`` wrote for ``rank``, one dict per training batch."""
    file = Path(f"{path}.rank{rank}")
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def fit_on_shards(demo: Path, out: Path, shards: str, *overrides: str, strategy: str | None = None,
                  record: Path | None = None, processes: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """`mammut fit --config configs/pretrain_shards.yaml` with a tiny model on ``shards`` (relative to
    ``demo``), as its own process (a strategy's process group stays its own), with
    ``configs/strategy/<strategy>.yaml`` on ``processes`` CPU processes; each rank appends its
    batches to ``record`` (``<record>.rank<N>``)."""
    callbacks = out / f"callbacks_{len(list(out.glob('callbacks_*.yaml')))}.yaml"
    text = ("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
            "      init_args: {save_top_k: -1, every_n_train_steps: 2, filename: '{step}'}\n")
    if record is not None:
        text += f"    - class_path: shard_runs.RecordBatches\n      init_args: {{path: {record}}}\n"
    callbacks.write_text(text)
    arguments = [
        "fit", "--config", str(REPO / "configs/pretrain_shards.yaml"),
        *(["--config", str(REPO / "configs/strategy" / f"{strategy}.yaml")] if strategy else []),
        "--config", str(callbacks), *TINY_MODEL, f"--data.root={demo}", f"--data.train_shards={shards}",
        "--data.batch_size=4", "--data.eval_batch_size=12", "--data.test_annotations=null",
        "--trainer.limit_val_batches=0", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1", "--trainer.accelerator=cpu", f"--trainer.devices={processes}",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *overrides,
    ]
    return mammut_on_processes(arguments, processes, out / "stderr.txt", timeout)

