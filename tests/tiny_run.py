"""Run the real `mammut` CLI in-process with a tiny model, and read its TensorBoard logs back."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mammut.cli import run_cli

from conftest import REPO

# A model small enough for a few CPU steps per second; everything else is configs/pretrain.yaml.
TINY_MODEL = [
    "--model.architecture.vision_width=32", "--model.architecture.vision_depth=2", "--model.architecture.vision_heads=2",
    "--model.architecture.text_width=32", "--model.architecture.text_depth=2", "--model.architecture.text_heads=2",
    "--model.architecture.cross_attention_layers=[1]", "--model.architecture.embed_dim=32",
    "--model.architecture.context_length=24", "--model.generation.max_new_tokens=8",
]


def run(command: str, data_root: Path, out: Path, *overrides: str,
        config: str | list[str] = "configs/pretrain.yaml") -> None:
    """``config``: a recipe, or a recipe and its overlays (e.g. the VQA recipe and the PEFT one)."""
    configs = [config] if isinstance(config, str) else config
    run_cli([
        command, *(argument for c in configs for argument in ("--config", str(REPO / c))), *TINY_MODEL,
        *data_arguments(data_root, joint="multitask" in configs[0]),
        "--trainer.precision=32-true", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        *overrides,
    ])


def data_arguments(data_root: Path, joint: bool, batch_size: int = 8) -> list[str]:
    """The tiny demo world in small batches, for a single task's data module or each task's of a joint one."""
    settings = [f"root={data_root}", f"batch_size={batch_size}", "eval_batch_size=12", "num_workers=0"]
    if not joint:
        return [f"--data.{setting}" for setting in settings]
    return [f"--data.tasks.{task}.init_args.{setting}" for task in ("pretrain", "vqa") for setting in settings]


class Crash(RuntimeError):
    pass


class CrashAtStep(Callback):
    """Kills the run as a lost node or a pre-empted job would, before step ``step`` starts."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"crashed before step {self.step}")


def checkpoint_every(folder: Path, steps: int, crash_at: int | None = None, snapshot: Path | None = None) -> list[str]:
    """Arguments that replace the config's callbacks: last.ckpt every ``steps`` steps, and
    optionally a crash before step ``crash_at`` and the weights at the start of training saved to
    ``snapshot``."""
    override = folder / f"checkpoint_every_{steps}_crash_{crash_at}.yaml"
    text = ("trainer:\n  callbacks:\n"
            "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
            f"      init_args: {{save_last: true, save_top_k: 0, every_n_train_steps: {steps}}}\n")
    if crash_at is not None:
        text += f"    - class_path: tiny_run.CrashAtStep\n      init_args: {{step: {crash_at}}}\n"
    if snapshot is not None:
        text += f"    - class_path: tiny_run.SnapshotAtStart\n      init_args: {{path: {snapshot}}}\n"
    override.write_text(text)
    return ["--config", str(override)]


class SnapshotAtStart(Callback):
    """Saves the module's weights when training starts, before the first step."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.path)


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under log_dir: tag -> [(step, value)]."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def image_tags(log_dir: Path) -> list[str]:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]
