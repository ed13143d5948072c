"""Tasks compose: a task that exists only here trains beside pretraining, a joint run of pretraining
and VQA resumes exactly, and checkpoints from before tasks were components still load."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import MeanAbsoluteError

from mammut.data.batch import ImageCaptionsBatch, ImageTextBatch
from mammut.data.tokenizer import main as train_tokenizer
from mammut.model import MammutConfig
from mammut.module import MammutModule
from mammut.task import Task, TaskLoss, TaskReport
from mammut.tasks.joint_data import JointDataModule
from mammut.tasks.pretrain import ImageTextDataModule, PretrainModule, PretrainTask
from mammut.tasks.vqa import VQAModule

from conftest import REPO
from mammut.cli import main
from tiny_run import TINY_MODEL, Crash, checkpoint_every, run, scalars

pytestmark = pytest.mark.slow

ARCHITECTURE = dict(image_size=32, vision_width=32, vision_depth=1, vision_heads=2, text_width=32, text_depth=2,
                    text_heads=2, cross_attention_layers=[1], embed_dim=32, context_length=24)
LEGACY = REPO / "tests" / "fixtures" / "pre_task_checkpoints"


class BrightnessTask(Task):
    """A task of this test alone: a linear head on the pooled visual tokens regresses each
    image's mean brightness. Its own head, loss, metric and baseline."""

    def __init__(self):
        super().__init__()
        self.metrics = nn.ModuleDict({"val": MeanAbsoluteError(), "val_baseline": MeanAbsoluteError()})

    def build(self, architecture: MammutConfig) -> None:
        self.head = nn.Linear(architecture.vision_width, 1)

    def predicted_brightness(self, model, images):
        return self.head(model.vision.pool(model.encode_image(images))).squeeze(-1)

    def empty_batch(self, device) -> ImageTextBatch:
        c = self.context.architecture
        return ImageTextBatch(images=torch.zeros(0, 3, c.image_size, c.image_size, device=device),
                              tokens=torch.zeros(0, c.context_length, dtype=torch.long, device=device),
                              image_ids=torch.zeros(0, dtype=torch.long, device=device))

    def loss(self, model, batch: ImageTextBatch) -> TaskLoss:
        loss = F.mse_loss(self.predicted_brightness(model, batch.images), batch.images.mean(dim=(1, 2, 3)),
                          reduction="sum") / max(len(batch), 1)
        return TaskLoss(loss, {"mse": loss})

    def evaluate(self, model, batch: ImageCaptionsBatch, stage: str, batch_idx: int) -> None:
        truth = batch.images.mean(dim=(1, 2, 3))
        self.metrics["val"].update(self.predicted_brightness(model, batch.images), truth)
        self.metrics["val_baseline"].update(torch.zeros_like(truth), truth)  # always the mean of normalised pixels

    def report(self, stage: str) -> TaskReport:
        report = TaskReport({"mae": float(self.metrics["val"].compute())},
                            {"mae": float(self.metrics["val_baseline"].compute())})
        self.reset(stage)
        return report

    def reset(self, stage: str) -> None:
        for metric in self.metrics.values():
            metric.reset()


class WeightsAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.head = pl_module.tasks["brightness"].head.weight.detach().clone()
        self.model = pl_module.model.image_projection.weight.detach().clone()


def test_a_new_task_trains_beside_pretraining_without_touching_the_shared_module(tiny_demo, tmp_path):
    def images_and_captions():
        return ImageTextDataModule(root=str(tiny_demo), batch_size=8, eval_batch_size=12, num_workers=0)

    data = JointDataModule({"pretrain": images_and_captions(), "brightness": images_and_captions()},
                           weights={"pretrain": 1.0, "brightness": 1.0})
    module = MammutModule(tasks={"pretrain": PretrainTask(), "brightness": BrightnessTask()},
                          architecture=MammutConfig(**ARCHITECTURE, vocab_size=data.vocab_size), lr=3e-3,
                          warmup_steps=1)
    start = WeightsAtStart()
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="joint", version="run")
    trainer = L.Trainer(max_steps=8, val_check_interval=8, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[start], logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        log_every_n_steps=1)
    trainer.fit(module, data)
    logged = scalars(tmp_path / "joint" / "run")
    pretrain_steps = {step for step, _ in logged["train/pretrain/loss"]}
    brightness_steps = {step for step, _ in logged["train/brightness/loss"]}
    # One task per step, both drawn, every step accounted for.
    assert pretrain_steps and brightness_steps and not pretrain_steps & brightness_steps
    assert pretrain_steps | brightness_steps == set(range(8))
    assert data.mixer.steps_per_task == {"pretrain": len(pretrain_steps), "brightness": len(brightness_steps)}
    for tag in ("val/brightness/mae", "val_baseline/brightness/mae", "val/pretrain/image_to_text/R@1",
                "val_baseline/pretrain/image_to_text/R@1"):
        assert tag in logged, tag
    # The head trained, and so did the shared model, through both tasks.
    assert not torch.equal(module.tasks["brightness"].head.weight, start.head)
    assert not torch.equal(module.model.image_projection.weight, start.model)
    # Weight decay is declared by the task: its head's bias is free of it, its weight is not.
    assert "tasks.brightness.head.bias" in module.no_weight_decay()
    assert "tasks.brightness.head.weight" not in module.no_weight_decay()


def test_make_multitask_trains_both_tasks_and_reports_each_beside_its_baseline(tiny_demo, tmp_path, capsys):
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=6", "--trainer.val_check_interval=6",
        "--trainer.logger.init_args.version=run", config="configs/multitask.yaml")
    printed = capsys.readouterr().out
    assert re.search(r"^val pretrain \(epoch", printed, re.MULTILINE)
    assert re.search(r"^val vqa \(epoch", printed, re.MULTILINE)
    assert re.search(r"^accuracy\s+[\d.]+\s+[\d.]+\s+\d+$", printed, re.MULTILINE)
    logged = scalars(tmp_path / "multitask" / "run")
    for tag in ("val/pretrain/retrieval/mean_R@1", "val_baseline/pretrain/CIDEr-D", "val/vqa/accuracy",
                "val_baseline/vqa/accuracy", "train/pretrain/loss", "train/vqa/loss"):
        assert tag in logged, tag


@pytest.mark.parametrize("mixing", [["--data.mixing=all", "--model.task_weighting=fixed"],
                                    ["--data.mixing=sample", "--data.weights={pretrain: 1, vqa: 1}"],
                                    ["--data.mixing=all", "--model.task_weighting=loss_balanced",
                                     "--model.loss_balance_alpha=1.0"]],
                         ids=["all-fixed", "sample", "all-loss-balanced"])
def test_a_joint_run_resumed_mid_epoch_continues_with_the_same_tasks_and_losses(tiny_demo, tmp_path, mixing):
    common = ["--trainer.max_steps=9", "--trainer.limit_val_batches=0", "--model.warmup_steps=2", *mixing]
    run("fit", tiny_demo, tmp_path, *common, "--trainer.logger.init_args.version=whole", config="configs/multitask.yaml")
    with pytest.raises(Crash):
        run("fit", tiny_demo, tmp_path, *common, "--trainer.logger.init_args.version=part",
            *checkpoint_every(tmp_path, 1, crash_at=5), config="configs/multitask.yaml")
    last = tmp_path / "multitask" / "part" / "checkpoints" / "last.ckpt"
    run("fit", tiny_demo, tmp_path, *common, "--trainer.logger.init_args.version=resumed", f"--ckpt_path={last}",
        config="configs/multitask.yaml")
    whole, resumed = scalars(tmp_path / "multitask" / "whole"), scalars(tmp_path / "multitask" / "resumed")
    if "--model.task_weighting=loss_balanced" in mixing:  # the weights follow the losses, and resume with them
        assert whole["train/pretrain/weight"][-1][1] != pytest.approx(1.0)
        assert resumed["train/vqa/weight"][-1] == pytest.approx(whole["train/vqa/weight"][-1], rel=1e-6)
    for task in ("pretrain", "vqa"):
        whole_steps = {s: v for s, v in whole.get(f"train/{task}/loss", []) if s >= 5}
        resumed_steps = dict(resumed.get(f"train/{task}/loss", []))
        assert whole_steps and sorted(resumed_steps) == sorted(whole_steps), task  # the same tasks at every step
        for step, value in whole_steps.items():
            assert resumed_steps[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (task, step)


def test_a_joint_run_resumes_with_its_data_settings_in_a_config_file(tiny_demo, tmp_path):
    # The tasks are saved in no checkpoint (they were given as objects): a resumed run takes them
    # from the config, however the rest of it was given.
    settings = tmp_path / "tiny.yaml"  # the tiny model and data, in a file rather than on the command line
    model: dict = {}
    for argument in TINY_MODEL:  # "--model.architecture.text_width=32" -> {"architecture": {"text_width": 32}}
        key, value = argument[len("--model."):].split("=")
        group, name = key.split(".")
        model.setdefault(group, {})[name] = yaml.safe_load(value)
    data = {"root": str(tiny_demo), "batch_size": 8, "eval_batch_size": 12, "num_workers": 0}
    settings.write_text(yaml.safe_dump({"model": {"init_args": model}, "data": {"init_args": {"tasks": {
        task: {"init_args": data} for task in ("pretrain", "vqa")}}}}))
    common = ["fit", "--config", str(REPO / "configs/multitask.yaml"), "--config", str(settings),
              "--trainer.precision=32-true", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--trainer.log_every_n_steps=1"]
    main([*common, "--trainer.max_steps=2", *checkpoint_every(tmp_path, 2)])
    last = next(tmp_path.rglob("last.ckpt"))
    main([*common, "--trainer.max_steps=3", f"--ckpt_path={last}", "--trainer.logger.init_args.version=resumed"])
    assert scalars(tmp_path / "multitask" / "resumed")["train/vqa/loss"][-1][0] == 2  # the third step ran


def test_checkpoints_from_before_tasks_were_components_still_load(tiny_demo, tmp_path):
    old = torch.load(LEGACY / "vqa_peft.ckpt", weights_only=True)
    restored = VQAModule.load_from_checkpoint(LEGACY / "vqa_peft.ckpt")
    state = restored.state_dict()
    for name in ("prompt", "projection.weight", "projection.bias"):
        assert torch.equal(state[f"tasks.vqa.prefix.{name}"], old["state_dict"][f"prefix.{name}"])
    assert torch.equal(state["model.image_projection.weight"], old["state_dict"]["model.image_projection.weight"])
    # Through init_from as well, strict: every parameter of the new module is found.
    architecture = old["hyper_parameters"]["architecture"]
    fresh = VQAModule(architecture=architecture, peft=old["hyper_parameters"]["peft"],
                      init_from=str(LEGACY / "vqa_peft.ckpt"), init_strict=True)
    assert torch.equal(fresh.state_dict()["tasks.vqa.prefix.prompt"], old["state_dict"]["prefix.prompt"])
    # A pre-refactor pretraining checkpoint resumes through the CLI.
    checkpoint = tmp_path / "pretrain.ckpt"
    shutil.copy(LEGACY / "pretrain.ckpt", checkpoint)
    # Its tokenizer, which the tiny demo trained on the captions alone then.
    tokenizer = tmp_path / "captions_tokenizer.json"
    train_tokenizer(["--captions", str(tiny_demo / "annotations/captions_train.json"), "--out", str(tokenizer)])
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=resumed", f"--ckpt_path={checkpoint}", f"--data.tokenizer={tokenizer}")
    assert [step for step, _ in scalars(tmp_path / "pretrain" / "resumed")["train/loss"]] == [1]
    assert isinstance(PretrainModule.load_from_checkpoint(checkpoint), PretrainModule)
    assert asdict(restored.architecture) == {**asdict(MammutConfig(**architecture))}
