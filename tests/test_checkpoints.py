"""Checkpoints that cannot run code, resumes that obey the command line, and saves that survive a kill."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mammut.checkpointing import CheckpointError, read_checkpoint, staging_path
from mammut.model import Mammut, MammutConfig
from mammut.model.weights_file import UnsafeWeightsError, read_state_dict
from mammut.tasks.pretrain import ImageTextDataModule, PretrainModule

from conftest import REPO
from tiny_run import TINY_MODEL, run, scalars

pytestmark = pytest.mark.slow

RECIPES = ["configs/pretrain.yaml", "configs/finetune_vqa.yaml"]  # the PEFT overlay keeps the VQA recipe's


class RunsCodeWhenUnpickled:
    """What a hostile checkpoint carries: unpickling it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def recipe_checkpoints_every_step(folder: Path, recipe: str = "configs/pretrain.yaml") -> list[str]:
    """The recipe's own checkpoint callback, saving every step instead of every few hundred."""
    callbacks = yaml.safe_load((REPO / recipe).read_text())["trainer"]["callbacks"]
    periodic = next(c for c in callbacks if c["init_args"].get("every_n_train_steps"))
    periodic["init_args"]["every_n_train_steps"] = 1
    override = folder / "every_step.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"callbacks": [periodic]}}))
    return ["--config", str(override)]


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory) -> Path:
    """The checkpoint folder of a 3-step tiny pretraining run with the recipe's checkpointing."""
    out = tmp_path_factory.mktemp("trained")
    run("fit", tiny_demo, out, "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=run", "--model.warmup_steps=1", *recipe_checkpoints_every_step(out))
    return out / "pretrain" / "run" / "checkpoints"


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path]:
    """A torch file that runs code when fully unpickled, and the marker that code would write."""
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.ckpt"
    state = Mammut(MammutConfig(**tiny_architecture())).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "payload": RunsCodeWhenUnpickled(marker)},
               path)
    return path, marker


def tiny_architecture() -> dict:
    arguments = dict(a.removeprefix("--model.architecture.").split("=") for a in TINY_MODEL if ".architecture." in a)
    return {k: yaml.safe_load(v) for k, v in arguments.items()}


def test_the_hostile_file_does_run_code_when_unpickled_in_full(hostile):
    """The control: the file really is hostile, so the tests below that find no marker mean something."""
    path, marker = hostile
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_weights_files_are_read_without_running_code(hostile):
    path, marker = hostile
    with pytest.raises(UnsafeWeightsError, match="hostile.ckpt"):
        read_state_dict(path, purpose="init_from")
    with pytest.raises(UnsafeWeightsError, match="init_from: .*hostile.ckpt"):
        PretrainModule(architecture=tiny_architecture(), init_from=str(path))
    with pytest.raises(UnsafeWeightsError, match="vision_weights: .*hostile.ckpt"):
        Mammut(MammutConfig(**tiny_architecture(), vision_weights=str(path)))
    with pytest.raises(CheckpointError, match="hostile.ckpt"):
        read_checkpoint(path)
    assert not marker.exists()


def test_no_command_runs_a_hostile_file(tiny_demo, trained, hostile, tmp_path):
    path, marker = hostile
    with pytest.raises(ValueError, match="hostile.ckpt was not loaded"):  # jsonargparse wraps the error
        run("fit", tiny_demo, tmp_path, "--trainer.max_steps=1", f"--model.init_from={path}")
    for command in ("fit", "validate"):
        with pytest.raises(CheckpointError, match="hostile.ckpt"):
            run(command, tiny_demo, tmp_path, "--trainer.max_steps=1", f"--ckpt_path={path}")
    assert not marker.exists()


def test_a_safe_checkpoint_naming_a_hostile_init_from_never_loads_it(tiny_demo, trained, hostile, tmp_path):
    path, marker = hostile
    checkpoint = torch.load(trained / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["init_from"] = str(path)
    planted = tmp_path / "planted.ckpt"
    torch.save(checkpoint, planted)
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=4", "--trainer.limit_val_batches=0", f"--ckpt_path={planted}")
    run("validate", tiny_demo, tmp_path, "--trainer.limit_val_batches=1", f"--ckpt_path={planted}")
    restored = PretrainModule.load_from_checkpoint(planted)
    assert torch.equal(restored.model.image_projection.weight, checkpoint["state_dict"]["model.image_projection.weight"])
    assert not marker.exists()


def test_resume_after_the_init_from_file_is_gone(tiny_demo, trained, tmp_path):
    pretrained = tmp_path / "pretrained.ckpt"
    shutil.copy(trained / "last.ckpt", pretrained)
    common = ["--trainer.limit_val_batches=0", f"--model.init_from={pretrained}",
              *recipe_checkpoints_every_step(tmp_path)]
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", "--trainer.logger.init_args.version=first", *common)
    pretrained.unlink()
    last = tmp_path / "pretrain" / "first" / "checkpoints" / "last.ckpt"
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=3", "--trainer.logger.init_args.version=resumed",
        f"--ckpt_path={last}", *common)
    assert [step for step, _ in scalars(tmp_path / "pretrain" / "resumed")["train/loss"]] == [2]


def test_command_line_values_win_over_the_checkpoints_on_resume(tiny_demo, trained, tmp_path):
    """The checkpoint was trained at lr 2e-3; resumed with --model.lr=1e-5, the schedule follows 1e-5."""
    common = ["--trainer.max_steps=5", "--trainer.limit_val_batches=0", "--model.warmup_steps=1"]
    run("fit", tiny_demo, tmp_path, *common, "--trainer.logger.init_args.version=lower",
        f"--ckpt_path={trained / 'last.ckpt'}", "--model.lr=1e-5", "--model.weight_decay=0.2")
    run("fit", tiny_demo, tmp_path, *common, "--trainer.logger.init_args.version=same",
        f"--ckpt_path={trained / 'last.ckpt'}")
    lower = dict(scalars(tmp_path / "pretrain" / "lower")["lr-AdamW/decay"])
    same = dict(scalars(tmp_path / "pretrain" / "same")["lr-AdamW/decay"])
    assert sorted(lower) == sorted(same) == [3, 4]
    for step in (3, 4):  # the same point of the schedule, scaled to the new peak
        assert lower[step] == pytest.approx(same[step] * 1e-5 / 2e-3, rel=1e-4)
    saved = torch.load(tmp_path / "pretrain" / "lower" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["lr"] == 1e-5
    decayed = [g for g in saved["optimizer_states"][0]["param_groups"] if g["name"] == "decay"]
    assert decayed[0]["weight_decay"] == 0.2 and decayed[0]["initial_lr"] == 1e-5


def test_the_recipes_keep_the_previous_checkpoint_as_well_as_the_newest(trained):
    assert sorted(p.name for p in trained.glob("*.ckpt")) == ["last.ckpt", "step2.ckpt", "step3.ckpt"]
    assert read_checkpoint(trained / "step2.ckpt")["global_step"] == 2
    assert read_checkpoint(trained / "last.ckpt")["global_step"] == 3
    for recipe in RECIPES:
        callbacks = yaml.safe_load((REPO / recipe).read_text())["trainer"]["callbacks"]
        periodic = next(c["init_args"] for c in callbacks if c["init_args"].get("every_n_train_steps"))
        assert periodic["save_top_k"] >= 2 and periodic["monitor"] == "step" and periodic["save_last"], recipe


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_fails_naming_the_file(tiny_demo, trained, tmp_path, damage):
    broken = tmp_path / f"{damage}.ckpt"
    data = (trained / "last.ckpt").read_bytes()
    garbage = b"this is not a checkpoint\n" * 200
    broken.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": garbage}[damage])
    with pytest.raises(CheckpointError, match=f"{damage}.ckpt is unreadable"):
        run("fit", tiny_demo, tmp_path, "--trainer.max_steps=4", f"--ckpt_path={broken}")


# Saves of a run checkpointing every step: 1 step1.ckpt, 2 last.ckpt, 3 step2.ckpt, 4 last.ckpt, ...
KILLS = [(4, "write:1"), (4, "write:5"), (4, "fsync"), (4, "replace"), (4, "replaced"), (3, "write:3")]


@pytest.fixture(scope="module")
def killed(tiny_demo, tmp_path_factory) -> dict[tuple[int, str], tuple[int, Path]]:
    """Each of KILLS: a 4-step run killed at that point of that save, as (exit status, its logs'
    folder). One process imports mammut and forks a run per kill (tests/kill_during_save.py)."""
    root = tmp_path_factory.mktemp("killed")
    # The system's temporary folder on another filesystem, as a node-local /tmp on a cluster.
    elsewhere = Path("/dev/shm") if Path("/dev/shm").is_dir() else root
    temporary = elsewhere / f"mammut-test-{os.getpid()}"
    jobs, folders = [], []
    for n, (save, point) in enumerate(KILLS):
        folder = root / str(n)
        folder.mkdir()
        (temporary / str(n)).mkdir(parents=True, exist_ok=True)
        arguments = ["fit", "--config", str(REPO / "configs/pretrain.yaml"), *TINY_MODEL,
                     f"--data.root={tiny_demo}", "--data.batch_size=8", "--data.num_workers=0",
                     "--trainer.precision=32-true", "--trainer.enable_progress_bar=false", "--trainer.max_steps=4",
                     "--trainer.limit_val_batches=0", f"--trainer.logger.init_args.save_dir={folder}",
                     "--trainer.logger.init_args.version=killed", *recipe_checkpoints_every_step(folder)]
        jobs.append({"save": save, "point": point, "tmpdir": str(temporary / str(n)), "args": arguments})
        folders.append(folder)
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    with open(root / "output.txt", "w") as output:  # every run's, for a failure's first error
        done = subprocess.run([sys.executable, str(REPO / "tests/kill_during_save.py"), str(jobs_file)],
                              cwd=REPO / "tests", stdout=output, stderr=subprocess.STDOUT, timeout=900)
    shutil.rmtree(temporary, ignore_errors=True)
    assert done.returncode == 0, (root / "output.txt").read_text()[-3000:]
    statuses = json.loads((root / "jobs.json.status").read_text())
    return {kill: (status, folder) for kill, status, folder in zip(KILLS, statuses, folders)}


@pytest.mark.parametrize("save, point", KILLS)
def test_a_kill_at_any_point_of_a_save_leaves_a_checkpoint_that_resumes(tiny_demo, tmp_path, killed, save, point):
    status, logs = killed[save, point]
    assert status == -9, f"not killed (exit status {status}); see {logs.parent / 'output.txt'}"
    folder = logs / "pretrain" / "killed" / "checkpoints"
    for checkpoint in folder.glob("*.ckpt"):
        read_checkpoint(checkpoint)  # every file under a checkpoint's name is whole
    last = folder / "last.ckpt"
    expected_step = {3: 1, 4: 2 if point == "replaced" else 1}[save]
    assert read_checkpoint(last)["global_step"] == expected_step
    assert staging_path(last).exists() == (save == 4 and point not in ("replaced",))
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=4", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=resumed", f"--ckpt_path={last}")
    resumed = scalars(tmp_path / "pretrain" / "resumed")["train/loss"]
    assert [step for step, _ in resumed] == list(range(expected_step, 4))


class InflateCaptionLogitsAtStep(Callback):
    """Scales the decoder's final norm by 1e6 before a given step: a finite loss in the millions,
    as a run diverging between two steps would give."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.decoder.norm.weight.mul_(1e6)


def test_a_finite_but_exploding_loss_stops_before_the_next_checkpoint(tiny_demo, tmp_path):
    data = ImageTextDataModule(root=str(tiny_demo), batch_size=8, num_workers=0)
    checkpoints = ModelCheckpoint(tmp_path, save_last=True, save_top_k=-1, every_n_train_steps=1, filename="{step}")
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, callbacks=[checkpoints, InflateCaptionLogitsAtStep(3)],
                        logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    module = PretrainModule(architecture={**tiny_architecture(), "vocab_size": data.vocab_size})
    with pytest.raises(FloatingPointError, match=r"diverging loss at global step 3 .*over 1000 times the reference"
                                                 r".*resume from the newest, .*last.ckpt"):
        trainer.fit(module, data)
    # A save is written once the next step's loss passes the guard: steps 1 and 2 were, and the
    # save after step 3, whose next loss diverged, was not; the exploded weights never reached a checkpoint.
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 2
    assert not (tmp_path / "step=3.ckpt").exists()
    saved = read_checkpoint(tmp_path / "last.ckpt")["state_dict"]["model.decoder.norm.weight"]
    assert saved.abs().max() < 1e3
    # The control: without the check the same run trains through the explosion and saves it.
    trainer = L.Trainer(max_steps=5, limit_val_batches=0, callbacks=[InflateCaptionLogitsAtStep(3)], logger=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, enable_checkpointing=False)
    module = PretrainModule(architecture={**tiny_architecture(), "vocab_size": data.vocab_size},
                            divergence_factor=None)
    trainer.fit(module, data)
    assert module.model.decoder.norm.weight.abs().max() > 1e3
