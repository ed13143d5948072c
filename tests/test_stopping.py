"""A run stops without saving broken weights or losing its progress, and a checkpoint of another
recipe is refused before anything is built."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mammut.checkpointing import read_checkpoint
from mammut.cli import main

from conftest import REPO
from tiny_run import TINY_MODEL, checkpoint_every, data_arguments, run, scalars

pytestmark = pytest.mark.slow


def test_an_exploding_lr_never_leaves_its_weights_in_a_checkpoint(tiny_demo, tmp_path):
    # As a user would: saves every step and --model.lr=1e9. Step 0's update explodes the weights;
    # step 1's loss is not finite. The save after step 0 holds those weights: it must not be written.
    with pytest.raises(FloatingPointError) as stopped:
        run("fit", tiny_demo, tmp_path, "--model.lr=1e9", "--model.warmup_steps=1", "--trainer.max_steps=6",
            "--trainer.limit_val_batches=0", "--trainer.logger.init_args.version=exploded",
            *checkpoint_every(tmp_path, 1))
    message = str(stopped.value)
    assert "non-finite loss at global step 1" in message
    assert "No checkpoint was written yet" in message and "resume from the last checkpoint" not in message
    folder = tmp_path / "pretrain" / "exploded" / "checkpoints"
    assert not list(folder.glob("*.ckpt"))  # nothing to resume into the same explosion


def test_the_stop_names_the_newest_checkpoint_whose_weights_trained_on(tiny_demo, tmp_path):
    # Two healthy steps are saved; then lr jumps (a resume with --model.lr=1e9): the first save of
    # the resumed run holds exploded weights and is not written; the message names the healthy one.
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--model.warmup_steps=1",
        "--trainer.logger.init_args.version=healthy", *checkpoint_every(tmp_path, 1))
    healthy = tmp_path / "pretrain" / "healthy" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(healthy)["global_step"] == 2
    with pytest.raises(FloatingPointError, match=rf"non-finite loss at global step 3 .*resume from the newest, "
                                                 rf"{healthy}"):
        run("fit", tiny_demo, tmp_path, "--trainer.max_steps=8", "--trainer.limit_val_batches=0",
            "--model.warmup_steps=1", "--model.lr=1e9", "--trainer.logger.init_args.version=healthy",
            f"--ckpt_path={healthy}", *checkpoint_every(tmp_path, 1))
    saved = read_checkpoint(healthy)
    assert saved["global_step"] == 2  # still the healthy weights
    assert all(torch.isfinite(value).all() and value.abs().max() < 1e3 for value in saved["state_dict"].values()
               if value.is_floating_point())


def tiny_fit_command(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mammut.cli", "fit", "--config", str(REPO / "configs/pretrain.yaml"), *TINY_MODEL,
            *data_arguments(data_root, joint=False), "--trainer.precision=32-true", "--trainer.log_every_n_steps=1",
            "--trainer.max_steps=100000", "--trainer.limit_val_batches=0", f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.logger.init_args.version=run", *extra]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_saves_last_ckpt_at_the_end_of_the_step_and_says_where(tiny_demo, tmp_path, stop):
    process = subprocess.Popen(tiny_fit_command(tiny_demo, tmp_path), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = []
    deadline = time.monotonic() + 300
    for line in process.stdout:  # off a terminal, progress is a line per step
        output.append(line)
        if line.startswith("step 3/"):
            process.send_signal(stop)
            break
        assert time.monotonic() < deadline, "".join(output)
    output.extend(process.stdout)
    code = process.wait(timeout=300)
    text = "".join(output)
    last = tmp_path / "pretrain" / "run" / "checkpoints" / "last.ckpt"
    assert code == 128 + stop, text[-3000:]
    assert f"{stop.name}: saved {last} at step" in text and f"--ckpt_path={last}" in text
    step = read_checkpoint(last)["global_step"]
    assert step >= 3  # the recipe's 200-step saves would have kept nothing
    # It resumes from there.
    run("fit", tiny_demo, tmp_path, f"--trainer.max_steps={step + 2}", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=resumed", f"--ckpt_path={last}")
    assert [s for s, _ in scalars(tmp_path / "pretrain" / "resumed")["train/loss"]] == [step, step + 1]


@pytest.fixture(scope="module")
def pretrain_checkpoint(tiny_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    run("fit", tiny_demo, out, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=run", *checkpoint_every(out, 1))
    return out / "pretrain" / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("recipe, as_a_process", [("configs/finetune_detection.yaml", True),
                                                   ("configs/finetune_vqa.yaml", False),
                                                   ("configs/finetune_video_qa.yaml", False)])
def test_a_checkpoint_of_another_recipe_is_refused_before_anything_is_built(tiny_demo, tmp_path, recipe, as_a_process,
                                                                            pretrain_checkpoint, capsys, monkeypatch):
    arguments = ["fit", "--config", str(REPO / recipe), f"--data.root={tiny_demo}", f"--ckpt_path={pretrain_checkpoint}",
                 f"--trainer.logger.init_args.save_dir={tmp_path}"]
    if as_a_process:  # the command's own exit status, once
        refused = subprocess.run([sys.executable, "-m", "mammut.cli", *arguments], cwd=REPO, capture_output=True,
                                 text=True, timeout=300)
        code, stderr = refused.returncode, refused.stderr
    else:
        monkeypatch.chdir(REPO)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(arguments)
        code, stderr = exit_.value.code, capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert f"--ckpt_path={pretrain_checkpoint} is a checkpoint of another recipe" in last_line
    assert "mammut.tasks.pretrain.PretrainModule" in last_line and f"--model.init_from={pretrain_checkpoint}" in last_line
    assert not any(tmp_path.iterdir())  # nothing was built or written


def test_a_video_qa_checkpoint_given_to_the_image_vqa_recipe_is_refused(tiny_demo, tmp_path):
    # Same model class (VQAModule), another data module: the tube model and the video run's
    # optimiser and schedule would silently replace the image recipe's.
    video_width = ["--model.architecture.vision_width=48", "--model.architecture.vision_heads=2"]
    run("fit", tiny_demo, tmp_path, *video_width, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=video", *checkpoint_every(tmp_path, 1), config="configs/finetune_video_qa.yaml")
    video = tmp_path / "finetune_video_qa" / "video" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"another recipe: .*VideoQADataModule.*VQADataModule"):
        run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", f"--ckpt_path={video}", config="configs/finetune_vqa.yaml")
    # A deliberate cross-recipe restore says so, and then runs: the tube model on images.
    run("validate", tiny_demo, tmp_path, *video_width, f"--ckpt_path={video}", "--restore_other_recipe=true",
        "--trainer.limit_val_batches=1", "--trainer.logger.init_args.version=crossed", config="configs/finetune_vqa.yaml")
