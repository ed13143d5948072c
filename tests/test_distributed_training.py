"""`mammut fit` on two CPU processes: FSDP2 checkpoints and resumes, and fine-tunes VQA with the PEFT
prefix and detection; DDP shards the data and survives a bad batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightning.pytorch.callbacks import Callback

from mammut.data import read_coco_captions, read_instances, read_vqa
from mammut.data.sampling import ResumableRandomSampler
from mammut.data.video_records import read_video_qa
from mammut.tasks.pretrain import PretrainModule

from distributed import fit_on_two_processes
from tiny_run import scalars

pytestmark = pytest.mark.slow


def keep_checkpoints_every(folder, steps: int) -> list[str]:
    override = folder / "checkpoints.yaml"
    override.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                        f"      init_args: {{save_top_k: -1, every_n_train_steps: {steps}, filename: '{{step}}'}}\n")
    return ["--config", str(override)]


def test_fsdp2_checkpoint_resumes_with_the_same_losses_and_consolidates(tiny_demo, tmp_path):
    """48 images, 2 ranks, batches of 4: 6 steps per epoch, so step 3 is mid-epoch. A validation
    batch (with generation, on full weights) runs before training and after step 3."""
    common = ["--trainer.max_steps=6", "--model.warmup_steps=2", "--model.grad_checkpointing=true",
              "--trainer.limit_val_batches=1", "--trainer.val_check_interval=3"]
    fit_on_two_processes(tiny_demo, tmp_path, "fsdp2", *common, *keep_checkpoints_every(tmp_path, 3),
                         "--trainer.logger.init_args.version=whole")
    checkpoints = tmp_path / "pretrain" / "whole" / "checkpoints"
    sharded = checkpoints / "step=3.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2  # one shard per rank
    fit_on_two_processes(tiny_demo, tmp_path, "fsdp2", *common, f"--ckpt_path={sharded}",
                         "--trainer.logger.init_args.version=resumed")
    whole_logs = scalars(tmp_path / "pretrain" / "whole")
    assert len(whole_logs["val/pretrain/retrieval/mean_R@1"]) == 2  # after steps 3 and 6
    whole = dict(whole_logs["train/loss"])
    resumed = dict(scalars(tmp_path / "pretrain" / "resumed")["train/loss"])
    assert sorted(resumed) == [3, 4, 5]
    for step in resumed:
        assert resumed[step] == pytest.approx(whole[step], rel=1e-5), step

    # One file from the shards, as the README says, which init_from loads completely.
    consolidated = tmp_path / "model.ckpt"
    subprocess.run([sys.executable, "-m", "lightning.fabric.utilities.consolidate_checkpoint",
                    str(checkpoints / "step=6.ckpt"), "--output_file", str(consolidated)], check=True)
    saved = torch.load(consolidated, weights_only=False)
    # Every token of both ranks' 6 batches of 4 captions (padding included) is counted, once.
    context = saved["state_dict"]["model.decoder.position_embedding"].shape[0]
    assert int(saved["state_dict"]["model.token_use.counts"].sum()) == 6 * 2 * 4 * context
    settings = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}  # not _class_path
    module = PretrainModule(**{**settings, "init_from": str(consolidated), "init_strict": True,
                               "restart_unmet_tokens": False})
    for name, value in module.state_dict().items():
        if name.startswith("model."):
            assert torch.equal(value, saved["state_dict"][name].reshape(value.shape)), name


def test_fsdp2_trains_the_vqa_peft_prefix_and_validates(tiny_demo, tmp_path):
    """The prefix reads the encoder's intermediate layers, outside ``Mammut.forward``: FSDP2 must
    gather the encoder's weights for that call as well, in training and in validation."""
    fit_on_two_processes(tiny_demo, tmp_path, "fsdp2", "--trainer.max_steps=3", "--model.warmup_steps=1",
                         "--trainer.limit_val_batches=1", "--trainer.val_check_interval=3",
                         "--model.peft.visual_layers=[0,1]", "--trainer.logger.init_args.version=peft",
                         "--model.adapter_checkpoints=false",  # full checkpoints: FSDP2 shards them
                         config=["configs/finetune_vqa.yaml", "configs/finetune_vqa_peft.yaml"], launcher="lightning")
    logs = scalars(tmp_path / "finetune_vqa_peft" / "peft")
    assert [step for step, _ in logs["train/loss"]] == [0, 1, 2]
    assert len(logs["val/vqa/accuracy"]) == 1

def test_ddp_ranks_draw_their_own_shards_and_a_rank_with_only_bad_samples_does_not_hang(tiny_demo, tmp_path):
    """Rank 0's first batch is made of corrupt images only: it still joins the collectives. Rank 1's
    first batch holds two: the run counts the skips of both."""
    root = tmp_path / "demo"
    subprocess.run(["cp", "-r", str(tiny_demo), str(root)], check=True)
    records, _ = read_coco_captions(root / "annotations/captions_train.json", root / "images/train")
    first_batch_of_rank_0 = list(ResumableRandomSampler(len(records), seed=0, num_replicas=2, rank=0))[:4]
    two_of_rank_1 = list(ResumableRandomSampler(len(records), seed=0, num_replicas=2, rank=1))[:2]
    for index in first_batch_of_rank_0 + two_of_rank_1:
        records[index].path.write_bytes(b"not a JPEG")
    fit_on_two_processes(root, tmp_path, "ddp", "--trainer.max_steps=3", "--data.skip_bad_samples=true",
                         "--model.grad_checkpointing=true", "--trainer.logger.init_args.version=run", timeout=180,
                         launcher="lightning")
    logged = scalars(tmp_path / "pretrain" / "run")
    # Rank 0 met the 4 bad images its shard holds, rank 1 its 2, all in their first batch.
    assert [value for _, value in logged["data/skipped_samples"]] == [6.0, 6.0, 6.0]
    assert [step for step, _ in logged["train/loss"]] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(value)) for _, value in logged["train/loss"])


class RecordTasks(Callback):
    """Writes the task of every training step of this rank to ``folder/tasks-rank<N>.txt``."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(f"{self.folder}/tasks-rank{trainer.global_rank}.txt", "a") as file:
            file.write(f"{trainer.global_step} {','.join(batch)}\n")


@pytest.mark.parametrize("strategy,mixing", [("ddp", "sample"), ("fsdp2", "sample"), ("ddp", "all")])
def test_a_joint_run_trains_the_same_tasks_on_every_rank_and_does_not_hang(tiny_demo, tmp_path, strategy, mixing):
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text("trainer:\n  callbacks:\n    - class_path: test_distributed_training.RecordTasks\n"
                         f"      init_args: {{folder: {tmp_path}}}\n")
    if mixing == "sample":
        # Under DDP a step of one task leaves the other's parameters (the contrastive projections) unused.
        unused = ["--trainer.strategy.init_args.find_unused_parameters=true"] if strategy == "ddp" else []
        mixing_arguments = ["--data.mixing=sample", "--data.weights={pretrain: 1, vqa: 1}", *unused]
    else:  # every parameter is used at every step: DDP needs no search for unused ones
        mixing_arguments = ["--data.mixing=all"]
    fit_on_two_processes(tiny_demo, tmp_path, strategy, "--trainer.max_steps=8", "--config", str(callbacks),
                         "--trainer.logger.init_args.version=run", *mixing_arguments, timeout=240,
                         config="configs/multitask.yaml")
    ranks = [(tmp_path / f"tasks-rank{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert len(ranks[0]) == 8 and ranks[0] == ranks[1]
    tasks_of_steps = {line.split()[1] for line in ranks[0]}
    assert tasks_of_steps == ({"pretrain", "vqa"} if mixing == "sample" else {"pretrain,vqa"})
    logged = scalars(tmp_path / "multitask" / "run")
    assert all(torch.isfinite(torch.tensor(value)) for _, value in logged["train/loss"])


@pytest.mark.parametrize("inputs", ["images", "video"])
def test_ddp_vqa_rank_with_only_bad_samples_does_not_hang(tiny_demo, tmp_path, inputs):
    """The all-bad-batch guard of the VQA task: rank 0's first batch of questions has only corrupt
    images, or corrupt videos, whose empty batch must take the same (tube) path as rank 1's clips."""
    root = tmp_path / "demo"
    subprocess.run(["cp", "-r", str(tiny_demo), str(root)], check=True)
    if inputs == "images":
        records, _ = read_vqa(root / "vqa/v2_OpenEnded_mscoco_train_questions.json",
                              root / "vqa/v2_mscoco_train_annotations.json", root / "images/train")
        config, name, extra = "configs/finetune_vqa.yaml", "finetune_vqa", []
    else:
        records, _ = read_video_qa(root / "video/train_qa.json", root / "video/videos")
        config, name = "configs/finetune_video_qa.yaml", "finetune_video_qa"
        extra = ["--model.architecture.vision_width=48", "--model.architecture.vision_heads=2"]
    first_batch_of_rank_0 = list(ResumableRandomSampler(len(records), seed=0, num_replicas=2, rank=0))[:4]
    for index in first_batch_of_rank_0:
        records[index].path.write_bytes(b"not a JPEG, not a video")
    fit_on_two_processes(root, tmp_path, "ddp", "--trainer.max_steps=3", "--data.skip_bad_samples=true", *extra,
                         "--trainer.logger.init_args.version=run", timeout=180, config=config)
    logged = scalars(tmp_path / name / "run")
    assert logged["data/skipped_samples"][0][1] >= 4
    assert [step for step, _ in logged["train/loss"]] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(value)) for _, value in logged["train/loss"])


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_detection_on_two_ranks_with_a_rank_of_bad_images_trains_and_validates(tiny_demo, tmp_path, strategy):
    """Detection normalises its loss by the boxes of every rank (a collective) and scores tokens with
    the model's projection outside ``Mammut.forward``: a rank whose first batch is only corrupt
    images must still join in, and FSDP2 must gather the projection for that call."""
    root = tmp_path / "demo"
    subprocess.run(["cp", "-r", str(tiny_demo), str(root)], check=True)
    records = read_instances(root / "annotations/instances_train.json", root / "images/train").records
    first_batch_of_rank_0 = list(ResumableRandomSampler(len(records), seed=0, num_replicas=2, rank=0))[:4]
    for index in first_batch_of_rank_0:
        records[index].path.write_bytes(b"not a JPEG")
    fit_on_two_processes(root, tmp_path, strategy, "--trainer.max_steps=3", "--data.skip_bad_samples=true",
                         "--trainer.limit_val_batches=1", "--trainer.val_check_interval=3",
                         "--trainer.logger.init_args.version=run", timeout=180,
                         config="configs/finetune_detection.yaml")
    logged = scalars(tmp_path / "finetune_detection" / "run")
    assert logged["data/skipped_samples"][0][1] >= 4
    assert [step for step, _ in logged["train/loss"]] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(value)) for _, value in logged["train/loss"])
    assert len(logged["val/detection/AP"]) == 1
