"""The strategy configs in configs/strategy/ parse, build what they promise, and fail clearly where they
cannot run; the compile flag."""

from __future__ import annotations

import pytest
import torch
import yaml
from timm.models.vision_transformer import Block

from mammut.cli import cpu_has_native_bf16, main, run_cli, warn_if_bf16_is_emulated
from mammut.model import MammutConfig
from mammut.model.text_decoder import DecoderLayer
from mammut.tasks.pretrain import PretrainModule

from conftest import REPO
from distributed import strategy_from_config

STRATEGIES = sorted((REPO / "configs" / "strategy").glob("*.yaml"))
PRETRAIN = str(REPO / "configs" / "pretrain.yaml")


def test_every_strategy_named_in_the_issue_is_shipped():
    assert {p.stem for p in STRATEGIES} >= {"ddp", "fsdp", "fsdp2", "deepspeed_stage_2", "deepspeed_stage_3"}


@pytest.mark.parametrize("config", STRATEGIES, ids=lambda p: p.stem)
def test_strategy_config_parses_with_the_recipe(config, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", PRETRAIN, "--config", str(config), "--print_config"])
    assert exit.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load(config.read_text())["trainer"]["strategy"]
    strategy = printed["trainer"]["strategy"]
    assert strategy["class_path"] == expected["class_path"]
    for key, value in expected["init_args"].items():  # lists of classes are sets: their order may change
        parsed = strategy["init_args"][key]
        assert (sorted(parsed) if isinstance(value, list) else parsed) == (sorted(value) if isinstance(value, list) else value), key


def test_fsdp_wraps_and_checkpoints_the_vit_blocks_and_decoder_layers():
    strategy = strategy_from_config("fsdp")
    for policy in (strategy.kwargs["auto_wrap_policy"], strategy._activation_checkpointing_kwargs["auto_wrap_policy"]):
        assert policy._module_classes == {Block, DecoderLayer}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a CUDA GPU")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_without_cuda_stops_with_the_fix(stage, tiny_demo):
    with pytest.raises(RuntimeError, match=r"only on CUDA GPUs.*configs/strategy/fsdp2\.yaml"):
        run_cli(["fit", "--config", PRETRAIN, "--config", str(REPO / f"configs/strategy/deepspeed_stage_{stage}.yaml"),
                 f"--data.root={tiny_demo}"])
    with pytest.raises(RuntimeError, match="only on CUDA GPUs"):
        run_cli(["fit", "--config", PRETRAIN, f"--trainer.strategy=deepspeed_stage_{stage}", f"--data.root={tiny_demo}"])


@pytest.mark.parametrize("compile", [False, True])
def test_compile_flag_compiles_each_transformer_block_in_configure_model(compile):
    """Only the wiring: compiling for real takes a minute on a CPU."""
    architecture = MammutConfig(image_size=32, vision_width=32, vision_depth=2, vision_heads=2, text_width=32,
                                text_depth=2, text_heads=2, cross_attention_layers=[1], embed_dim=32,
                                context_length=12, vocab_size=50)
    module = PretrainModule(architecture=architecture, compile=compile)
    assert all(block._compiled_call_impl is None for block in module.model.transformer_blocks())
    module.configure_model()
    assert all((block._compiled_call_impl is not None) == compile for block in module.model.transformer_blocks())


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "32-true"])
def test_a_bf16_run_on_a_cpu_without_native_bf16_is_warned_about(precision):
    warned = warn_if_bf16_is_emulated(precision, "cpu")
    assert warned == ("bf16" in precision and not cpu_has_native_bf16())
    assert not warn_if_bf16_is_emulated(precision, "gpu")
