"""MammutModule's shared machinery: optimiser groups, schedule, freezing and weight loading."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from mammut.model import MammutConfig
from mammut.module import MammutModule, warmup_cosine
from mammut.trained import parameter_counts
from mammut.tasks.pretrain import PretrainModule

SMALL = dict(image_size=32, vision_width=32, vision_depth=1, vision_heads=2, text_width=32, text_depth=2,
             text_heads=2, cross_attention_layers=[1], embed_dim=16, context_length=12, vocab_size=50)


def small_module(**kwargs) -> MammutModule:
    torch.manual_seed(kwargs.pop("seed", 0))
    return PretrainModule(architecture=MammutConfig(**{**SMALL, **kwargs.pop("architecture", {})}), **kwargs)


def test_warmup_then_cosine_to_the_floor():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 10, math.inf, 0.1) == 1.0


def test_no_weight_decay_on_norms_biases_embeddings_and_temperature():
    module = small_module(weight_decay=0.1)
    module.trainer = L.Trainer(max_steps=100, logger=False, enable_checkpointing=False)
    optimizer = module.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.logit_scale" in not_decayed
    assert "model.decoder.token_embedding.weight" in not_decayed
    assert "model.vision.vit.pos_embed" in not_decayed
    assert all(n.endswith(".bias") or "norm" in n or "embed" in n or n.endswith(("logit_scale", "cls_token"))
               for n in not_decayed)
    assert "model.decoder.layers.0.self_attention.qkv.weight" in decayed
    assert not any(n.endswith(".bias") for n in decayed)
    assert decayed | not_decayed == set(names.values())


def test_lr_scales_give_matching_parameters_their_own_learning_rate():
    module = small_module(lr=1e-3, lr_scales={"model.decoder.layers.1.*": 10.0})
    module.trainer = L.Trainer(max_steps=100, logger=False, enable_checkpointing=False)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.named_parameters()}
    by_group = {group["name"]: (group["initial_lr"], {names[id(p)] for p in group["params"]}) for group in optimizer.param_groups}
    assert set(by_group) == {"decay", "no_decay", "decay_x10", "no_decay_x10"}
    assert by_group["decay_x10"][0] == pytest.approx(1e-2) and by_group["decay"][0] == pytest.approx(1e-3)
    scaled = by_group["decay_x10"][1] | by_group["no_decay_x10"][1]
    assert scaled == {n for n in names.values() if n.startswith("model.decoder.layers.1.")}


def test_freeze_by_name_pattern():
    module = small_module(freeze=["model.vision.*", "model.logit_scale"])
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in module.named_parameters() if n.startswith("model.vision.")} | {"model.logit_scale"}
    trainable, total = parameter_counts(module)
    assert 0 < trainable < total
    with pytest.raises(ValueError, match="match no parameter"):
        small_module(freeze=["model.nothing_here.*"])


def test_frozen_batch_norms_keep_their_statistics_in_train_mode():
    module = small_module(architecture=dict(patch_embedding="conv_stem"), freeze=["model.vision.*"]).train()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    module.model.encode_image(torch.randn(4, 3, 32, 32))
    assert norms and not any(m.training for m in norms)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before))
    assert module.model.decoder.training  # the rest still trains
    trainable = small_module(architecture=dict(patch_embedding="conv_stem")).train()
    assert all(m.training for m in trainable.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_init_from_copies_matching_weights_and_keeps_the_rest(tmp_path):
    source = small_module(seed=1)
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    # Another vocabulary: the token embedding and output layer cannot be copied.
    target = small_module(seed=2, architecture={"vocab_size": 60}, init_from=str(path))
    source_state, target_state = source.state_dict(), target.state_dict()
    assert torch.equal(target_state["model.vision.vit.patch_embed.proj.weight"],
                       source_state["model.vision.vit.patch_embed.proj.weight"])
    assert target_state["model.decoder.token_embedding.weight"].shape == (60, 32)
    with pytest.raises(ValueError, match="missing or of another shape"):
        small_module(architecture={"vocab_size": 60}, init_from=str(path), init_strict=True)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        small_module(init_from=str(tmp_path / "nowhere.ckpt"))


def test_init_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = small_module(seed=3)
    path = tmp_path / "weights.safetensors"
    # Tied weights are stored once in safetensors files.
    state = {k: v.contiguous() for k, v in source.state_dict().items() if k != "model.decoder.lm_head.weight"}
    save_file(state, str(path))
    target = small_module(seed=4, init_from=str(path), init_strict=False)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
