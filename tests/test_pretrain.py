"""End to end: `mammut fit/validate/predict` on a tiny demo world, resume, bad losses, bad data."""

from __future__ import annotations

import shutil
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mammut.cli import run_cli
from mammut.model import MammutConfig
from mammut.tasks.pretrain import ImageTextDataModule, PretrainModule

from conftest import REPO, needs_compiler
from tiny_run import Crash, checkpoint_every, image_tags, run, scalars

pytestmark = pytest.mark.slow


def log_dir(out, version="run"):
    return out / "pretrain" / version


def test_fit_logs_metrics_images_and_checkpoints(tiny_demo, tmp_path):
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=4", "--trainer.val_check_interval=2",
        "--trainer.logger.init_args.version=run")
    logged = scalars(log_dir(tmp_path))
    for tag in ("train/loss", "train/pretrain/contrastive_loss", "train/pretrain/caption_loss", "train/pretrain/temperature", "lr-AdamW/decay",
                "val/pretrain/image_to_text/R@1", "val/pretrain/text_to_image/R@10", "val/pretrain/CIDEr-D", "val/pretrain/BLEU-4",
                "val_baseline/pretrain/text_to_image/R@1", "val_baseline/pretrain/CIDEr-D", "data/skipped_samples"):
        assert tag in logged, tag
    assert [step for step, _ in logged["train/loss"]] == [0, 1, 2, 3]
    assert len(logged["val/pretrain/CIDEr-D"]) == 2
    # Chance R@1 of text -> image is 1 / number of val images.
    assert logged["val_baseline/pretrain/text_to_image/R@1"][0][1] == pytest.approx(1 / 24)
    assert "val/pretrain/samples" in image_tags(log_dir(tmp_path))
    checkpoints = sorted(p.name for p in (log_dir(tmp_path) / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-step") for name in checkpoints)


@pytest.mark.parametrize("crash_at", [3, 8], ids=["first epoch", "second epoch"])
def test_resumed_run_continues_with_the_same_losses(tiny_demo, tmp_path, crash_at):
    """48 training images in batches of 8: steps 3 and 8 are each in the middle of an epoch (the
    first, the second), and a run resumed there sees the samples the whole run saw."""
    common = ["--trainer.limit_val_batches=0", "--model.warmup_steps=2"]
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=10", "--trainer.logger.init_args.version=whole", *common)
    with pytest.raises(Crash):
        run("fit", tiny_demo, tmp_path, "--trainer.max_steps=10", "--trainer.logger.init_args.version=part",
            *checkpoint_every(tmp_path, 1, crash_at=crash_at), *common)
    last = log_dir(tmp_path, "part") / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == crash_at
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("fit", tiny_demo, tmp_path, "--trainer.max_steps=10", "--trainer.logger.init_args.version=resumed",
            f"--ckpt_path={last}", *common)
    # The data module resumes the epoch itself: Lightning's "loader not resumable" would be a false alarm.
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]
    whole = dict(scalars(log_dir(tmp_path, "whole"))["train/loss"])
    resumed = dict(scalars(log_dir(tmp_path, "resumed"))["train/loss"])
    assert sorted(resumed) == list(range(crash_at, 10))
    for step in range(crash_at, 10):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-6, abs=1e-6), step


class PoisonWeightsAtStep(Callback):
    """Sends one weight to inf before a given step, as a diverging run would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.image_projection.weight[0, 0] = float("inf")


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_checkpoints(tiny_demo, tmp_path):
    data = ImageTextDataModule(root=str(tiny_demo), batch_size=8, num_workers=0, context_length=24, image_size=32)
    architecture = MammutConfig(image_size=32, vision_width=32, vision_depth=1, vision_heads=2, text_width=32,
                                text_depth=2, text_heads=2, cross_attention_layers=[1], embed_dim=32,
                                context_length=24, vocab_size=data.vocab_size)
    checkpoints = ModelCheckpoint(tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, callbacks=[checkpoints, PoisonWeightsAtStep(3)],
                        logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at global step 3 .*contrastive_loss=nan"):
        trainer.fit(PretrainModule(architecture=architecture), data)
    # The poisoned weights gave step 3's loss; each save is written once the next step's loss passes
    # the check, so last.ckpt holds step 2's, the newest whose next loss was finite.
    last = tmp_path / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def _demo_with_a_corrupt_image(tiny_demo, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root)
    victim = sorted((root / "images" / "train").iterdir())[5]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return root, victim


def test_a_corrupt_image_fails_naming_the_file(tiny_demo, tmp_path):
    root, victim = _demo_with_a_corrupt_image(tiny_demo, tmp_path)
    with pytest.raises(Exception, match=victim.name):
        run("fit", root, tmp_path, "--trainer.max_steps=6", "--trainer.limit_val_batches=0")


def test_skip_bad_samples_counts_and_logs_the_skips(tiny_demo, tmp_path):
    root, _ = _demo_with_a_corrupt_image(tiny_demo, tmp_path)
    run("fit", root, tmp_path, "--trainer.max_steps=6", "--trainer.limit_val_batches=0",
        "--data.skip_bad_samples=true", "--trainer.logger.init_args.version=run")
    skipped = scalars(log_dir(tmp_path))["data/skipped_samples"]
    assert skipped[-1][1] == 1.0  # one epoch of 6 steps sees every image once


def test_validate_and_predict_from_a_checkpoint(tiny_demo, tmp_path, capsys):
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=run")
    last = log_dir(tmp_path) / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    run("validate", tiny_demo, tmp_path, f"--ckpt_path={last}", "--trainer.logger.init_args.version=val")
    report = "".join(capsys.readouterr())
    assert "text_to_image/R@1" in report and "baseline" in report
    image = sorted((tiny_demo / "images" / "val").iterdir())[0]
    run("predict", tiny_demo, tmp_path, f"--ckpt_path={last}", f"--data.predict_images=[{image}]",
        "--trainer.logger.init_args.version=predict")
    printed = "".join(capsys.readouterr())
    assert f"{image}\t" in printed


@pytest.mark.slow
@needs_compiler
def test_predict_with_the_compiled_decoding_step_captions_alike(tiny_demo, tmp_path, capsys, without_autotuning):
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=run")
    last = log_dir(tmp_path) / "checkpoints" / "last.ckpt"
    images = [str(path) for path in sorted((tiny_demo / "images" / "val").iterdir())[:3]]
    capsys.readouterr()
    captions = {}
    for compiled in ("false", "true"):
        run("predict", tiny_demo, tmp_path, f"--ckpt_path={last}", f"--data.predict_images=[{','.join(images)}]",
            f"--model.generation.compile={compiled}", f"--trainer.logger.init_args.version=predict_{compiled}")
        captions[compiled] = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]
    assert [line.split("\t")[0] for line in captions["false"]] == images
    assert captions["true"] == captions["false"]


def test_print_config_resolves_overrides(capsys):
    with pytest.raises(SystemExit) as printed:
        run_cli(["fit", "--config", str(REPO / "configs/pretrain.yaml"), "--model.lr=3e-4",
                 "--trainer.max_steps=200", "--print_config"])
    assert printed.value.code == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out
    assert "max_steps: 200" in out
