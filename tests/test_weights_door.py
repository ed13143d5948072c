"""One door for weights (mammut.model.weights): each way weights come in names, fits and reports
alike, because each passes through ``conform``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mammut.model import Mammut, MammutConfig
from mammut.model.lora import LoraConfig, add_lora
from mammut.model.weights import conform, load_mammut_weights
from mammut.tasks.pretrain import PretrainModule
from mammut.tasks.vqa import VQAModule

from conftest import REPO

SMALL = dict(image_size=32, vision_width=32, vision_depth=1, vision_heads=2, text_width=32, text_depth=2,
             text_heads=2, cross_attention_layers=[1], embed_dim=16, context_length=12, vocab_size=50)
LEGACY = REPO / "tests" / "fixtures" / "pre_task_checkpoints"


def small(seed: int, **architecture) -> PretrainModule:
    torch.manual_seed(seed)
    return PretrainModule(architecture=MammutConfig(**{**SMALL, **architecture}))


def test_conform_renames_unwraps_lora_reshapes_single_numbers_resamples_and_lists_what_has_no_place():
    target = {"tasks.vqa.prefix.prompt": torch.zeros(2, 4), "model.qkv.base_layer.weight": torch.zeros(3, 3),
              "model.logit_scale": torch.zeros(1), "model.pos": torch.zeros(1, 4)}
    state = {"prefix.prompt": torch.ones(2, 4),  # a key from before tasks were components
             "model.qkv.weight": torch.ones(3, 3),  # a plain name for a layer LoRA wrapped
             "model.logit_scale": torch.tensor(2.0),  # a single number stored with shape ()
             "model.pos": torch.ones(1, 2),  # another grid, resampled
             "model.gone": torch.ones(1), "model.qkv.base_layer.weight.extra": torch.ones(1)}
    fitted, skipped = conform(state, target, renames={"prefix.": "tasks.vqa.prefix."},
                              resample={"model.pos": lambda t: t.repeat(1, 2)})
    assert set(fitted) == set(target)
    assert fitted["model.logit_scale"].shape == (1,) and fitted["model.logit_scale"].item() == 2.0
    assert fitted["model.pos"].shape == (1, 4) and torch.equal(fitted["model.qkv.base_layer.weight"], torch.ones(3, 3))
    assert skipped == ["model.gone", "model.qkv.base_layer.weight.extra"]  # under the file's own names


def test_init_from_reports_what_it_placed_skipped_and_left_unfilled(tmp_path):
    source = small(1)
    path = tmp_path / "weights.ckpt"
    state = dict(source.state_dict())
    state["model.logit_scale"] = state["model.logit_scale"].reshape(())  # as older checkpoints hold it
    state["model.no_such_layer.weight"] = torch.ones(2)
    torch.save({"state_dict": state}, path)
    target = small(2, vocab_size=60)  # another vocabulary: the token embedding has another shape
    report = target.load_weights(str(path))
    assert report.source == str(path)
    assert "model.no_such_layer.weight" in report.skipped and "model.decoder.token_embedding.weight" in report.skipped
    assert "model.decoder.token_embedding.weight" in report.unfilled
    assert "model.logit_scale" in report.placed
    assert torch.equal(target.model.logit_scale, source.model.logit_scale)
    assert "kept their initialisation" in str(report)


def test_an_image_size_change_resamples_the_position_embedding_through_every_door(tmp_path):
    source = small(3)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if k != "model.decoder.lm_head.weight"},
              str(path))
    target = small(4, image_size=64)
    report = target.load_weights(str(path))
    assert "model.vision.vit.pos_embed" in report.placed
    assert target.model.vision.vit.pos_embed.shape[1] == 1 + 8 * 8


@pytest.mark.parametrize("context_length", [20, 8])
def test_another_context_length_keeps_the_trained_text_positions(tmp_path, context_length):
    source = small(7)
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = small(8, context_length=context_length)
    own = target.model.decoder.position_embedding.detach().clone()
    report = target.load_weights(str(path))
    assert "model.decoder.position_embedding" in report.placed
    loaded, trained = target.model.decoder.position_embedding, source.model.decoder.position_embedding
    kept = min(context_length, SMALL["context_length"])
    assert loaded.shape == (context_length, SMALL["text_width"])
    assert torch.equal(loaded[:kept], trained[:kept])  # not interpolated: position i is still position i
    assert torch.equal(loaded[kept:], own[kept:])  # longer: the new positions keep their initialisation


def test_a_text_position_embedding_of_another_width_is_an_error_naming_the_file(tmp_path):
    state = dict(small(9).state_dict())
    state["model.decoder.position_embedding"] = torch.zeros(SMALL["context_length"] + 4, SMALL["text_width"] + 1)
    path = tmp_path / "wider.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=f"{path}: cannot fit a text position embedding .* another width"):
        small(10, context_length=SMALL["context_length"] + 4).load_weights(str(path))


def test_the_model_alone_loads_through_the_same_door(tmp_path):
    source = small(5)
    path = tmp_path / "model.safetensors"
    save_file({k.removeprefix("model."): v.contiguous() for k, v in source.state_dict().items()
               if k.startswith("model.") and k != "model.decoder.lm_head.weight"}, str(path))
    torch.manual_seed(6)
    model = Mammut(MammutConfig(**SMALL))
    report = load_mammut_weights(model, path, strict=True)
    assert not report.unfilled and not report.skipped
    for name, value in model.state_dict().items():
        assert torch.equal(value, source.model.state_dict()[name]), name


def test_base_weights_reach_a_lora_wrapped_model(tmp_path):
    source = small(7)
    path = tmp_path / "base.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = small(8)
    add_lora(target.model, LoraConfig(rank=2, targets=["decoder.layers.*.mlp.*"]))
    report = target.load_weights(str(path))  # what an adapter checkpoint's base goes through
    wrapped = next(name for name in target.state_dict() if ".base_layer." in name)
    assert torch.equal(target.state_dict()[wrapped], source.state_dict()[wrapped.replace(".base_layer.", ".")])
    assert not any(".lora_" in name for name in report.unfilled)  # adapters start anew, unreported


def test_vision_weights_go_through_the_door_and_must_fill_the_vit(tmp_path):
    source = Mammut(MammutConfig(**SMALL))
    path = tmp_path / "vit.safetensors"
    state = {k: v.contiguous() for k, v in source.vision.vit.state_dict().items()}
    save_file({**state, "head.weight": torch.ones(3, 32)}, str(path))  # a classifier the encoder has no place for
    loaded = Mammut(MammutConfig(**SMALL, vision_weights=str(path)))
    assert torch.equal(loaded.vision.vit.pos_embed, source.vision.vit.pos_embed)
    del state["blocks.0.attn.qkv.weight"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"vision_weights: .*vit.safetensors: 1 parameters missing .*blocks.0.attn.qkv"):
        Mammut(MammutConfig(**SMALL, vision_weights=str(path)))


def test_a_checkpoint_from_before_the_refactor_restores_through_load_from_checkpoint():
    old = torch.load(LEGACY / "vqa_peft.ckpt", weights_only=True)
    restored = VQAModule.load_from_checkpoint(LEGACY / "vqa_peft.ckpt")
    assert torch.equal(restored.state_dict()["tasks.vqa.prefix.prompt"], old["state_dict"]["prefix.prompt"])
    assert restored.trained.base_weights is None and restored.hparams.init_from is None
