"""Shipped configs cannot rot: each parses against the code it configures."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest
import yaml

from conftest import REPO
from mammut.model import PRESETS

RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "configs").glob("*.yaml"))
# Overlays change a recipe rather than stand alone: each parses on top of its recipe.
OVERLAYS = {"configs/finetune_vqa_peft.yaml": "configs/finetune_vqa.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_recipe_parses(recipe):
    base = OVERLAYS.get(str(recipe))
    configs = [*(["--config", base] if base else []), "--config", str(recipe)]
    result = subprocess.run([sys.executable, "-m", "mammut.cli", "fit", *configs, "--print_config"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "class_path: mammut.tasks." in result.stdout


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_preset_yaml_matches_the_python_preset(name):
    shipped = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    expected = {k: v for k, v in asdict(PRESETS[name]).items() if k not in ("vocab_size", "pad_id", "bos_id", "eos_id")}
    assert shipped == expected


def test_a_preset_file_switches_the_architecture():
    result = subprocess.run(
        [sys.executable, "-m", "mammut.cli", "fit", "--config", "configs/pretrain.yaml",
         "--model.architecture=configs/model/small.yaml", "--print_config"],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["init_args"]["architecture"]["vision_width"] == PRESETS["small"].vision_width
