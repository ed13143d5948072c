"""Shipped configs cannot rot: each parses against the code it configures."""

from __future__ import annotations

import json
from dataclasses import asdict

import lightning as L
import pytest
import yaml
from jsonargparse import ArgumentParser

from conftest import REPO
from mammut.cli import main, warn_if_the_final_state_goes_unscored
from mammut.model import PRESETS
from mammut.tasks.detection import DetectionDataModule
from mammut.tasks.pretrain import ImageTextDataModule
from mammut.tasks.video import VideoCaptionDataModule, VideoQADataModule
from mammut.tasks.vqa import VQADataModule

RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "configs").glob("*.yaml"))
# Overlays change a recipe rather than stand alone: each parses on top of its recipe.
OVERLAYS = {"configs/finetune_vqa_peft.yaml": "configs/finetune_vqa.yaml",
            "configs/finetune_vqa_lora.yaml": "configs/finetune_vqa.yaml",
            "configs/pretrain_fusion.yaml": "configs/pretrain.yaml",
            "configs/pretrain_mixture.yaml": "configs/pretrain.yaml",
            "configs/pretrain_shards_mixture.yaml": "configs/pretrain_shards.yaml",
            "configs/finetune_detection_selftrain.yaml": "configs/finetune_detection.yaml",
            "configs/finetune_detection_text.yaml": "configs/finetune_detection.yaml"}


def print_config(*args: str, capsys, monkeypatch) -> str:
    """What `mammut fit ARGS --print_config` prints, run in this process from the repository root."""
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_recipe_parses(recipe, capsys, monkeypatch):
    base = OVERLAYS.get(str(recipe))
    configs = [*(["--config", base] if base else []), "--config", str(recipe)]
    printed = print_config(*configs, capsys=capsys, monkeypatch=monkeypatch)
    assert "class_path: mammut.tasks." in printed
    # Its last step is validated: the metrics it ends with are its final weights'.
    assert not warn_if_the_final_state_goes_unscored(steps_and_validation(yaml.safe_load(printed)["trainer"]))


def steps_and_validation(trainer: dict, **changes) -> L.Trainer:
    """A Trainer with a recipe's steps and validation settings (and ``changes``), nothing else."""
    settings = {key: trainer[key] for key in ("max_steps", "val_check_interval", "check_val_every_n_epoch",
                                              "accumulate_grad_batches") if key in trainer} | changes
    return L.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)


def test_a_run_ending_between_validations_is_warned_of(caplog):
    recipe = yaml.safe_load((REPO / "configs/pretrain.yaml").read_text())["trainer"]
    with caplog.at_level("WARNING", logger="mammut"):
        assert warn_if_the_final_state_goes_unscored(steps_and_validation(recipe, max_steps=1200))
    assert "max_steps 1200 is not a multiple of val_check_interval 500: the last validation comes after batch 1000" \
        in caplog.text
    assert not warn_if_the_final_state_goes_unscored(steps_and_validation(recipe, max_steps=1500))
    # The interval counts training batches: 2 per step make step 250 batch 500.
    assert not warn_if_the_final_state_goes_unscored(steps_and_validation(recipe, max_steps=1250,
                                                                          accumulate_grad_batches=2))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_preset_yaml_matches_the_python_preset(name):
    shipped = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    # As YAML holds it: tuples are lists.
    expected = json.loads(json.dumps({k: v for k, v in asdict(PRESETS[name]).items()
                                      if k not in ("vocab_size", "pad_id", "bos_id", "eos_id")}))
    assert shipped == expected


def test_a_preset_file_switches_the_architecture(capsys, monkeypatch):
    config = yaml.safe_load(print_config("--config", "configs/pretrain.yaml",
                                         "--model.architecture=configs/model/small.yaml",
                                         capsys=capsys, monkeypatch=monkeypatch))
    assert config["model"]["init_args"]["architecture"]["vision_width"] == PRESETS["small"].vision_width


@pytest.mark.parametrize("data_class", [ImageTextDataModule, VQADataModule, VideoCaptionDataModule, VideoQADataModule,
                                        DetectionDataModule],
                         ids=lambda c: c.__name__)
def test_a_data_module_saves_every_argument_the_cli_offers(data_class, tiny_demo):
    # The shared arguments reach TaskDataModule through **kwargs: the CLI must still offer them,
    # and the checkpoint (which a resumed run's data settings come from) must still hold them.
    parser = ArgumentParser()
    parser.add_class_arguments(data_class, "data")
    offered = set(vars(parser.get_defaults().data))
    data = data_class(root=str(tiny_demo), num_workers=0, seed=5, batch_size=3)
    assert set(data.hparams) == offered
    assert {"root", "tokenizer", "image_size", "context_length", "num_workers", "skip_bad_samples", "seed"} <= offered
    assert (data.hparams.root, data.hparams.num_workers, data.hparams.seed, data.hparams.batch_size) == \
        (str(tiny_demo), 0, 5, 3)
