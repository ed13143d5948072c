"""The gathered contrastive loss under data parallelism (2 gloo processes on the CPU).

Under DDP, FSDP1 (as configs/strategy/fsdp.yaml wraps the model, activation checkpointing
included) and FSDP2 (``mammut.sharding``), a global batch split over two ranks gives the
same loss and, after the strategy's gradient averaging, the same gradients as one process on
the whole batch. Splits: even, uneven (ranks that lost different numbers of bad samples) and
one rank with no rows at all (every sample bad), which must not hang either.

Tolerance: fp32, ``rtol=1e-4, atol=1e-6`` for gradients and ``rel=1e-5`` for the loss; the sums
are only reordered across ranks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn.parallel import DistributedDataParallel

from mammut import sharding
from mammut.model import ContrastiveLoss, Mammut, MammutConfig

from distributed import on_two_ranks, wrap_as_fsdp_config

pytestmark = pytest.mark.slow

# No cross-attention, so that every parameter takes part in the contrastive pass.
CONFIG = MammutConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2,
                      text_width=32, text_depth=2, text_heads=2, cross_attention_layers=[],
                      embed_dim=16, context_length=12, vocab_size=50)
GLOBAL_BATCH = 8
SPLITS = {"even": (4, 4), "uneven": (3, 5), "one rank empty": (0, 8)}
LOSSES = [("infonce", False), ("infonce", True), ("focal", False), ("focal", True)]
WRAPPERS = ("ddp", "fsdp1", "fsdp2")


def tiny_model() -> Mammut:
    torch.manual_seed(0)
    return Mammut(CONFIG)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Images and captions: bos, words, eos, then padding, of lengths 4 to 12."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, CONFIG.image_size, CONFIG.image_size, generator=generator)
    T = CONFIG.context_length
    tokens = torch.randint(3, CONFIG.vocab_size, (GLOBAL_BATCH, T), generator=generator)
    lengths = torch.randint(4, T + 1, (GLOBAL_BATCH,), generator=generator)
    positions = torch.arange(T)
    tokens[:, 0] = CONFIG.bos_id
    tokens[positions[None] == lengths[:, None] - 1] = CONFIG.eos_id
    tokens[positions[None] >= lengths[:, None]] = CONFIG.pad_id
    return images, tokens


def loss_and_gradients(model: nn.Module, images, tokens, kind: str, local_loss: bool):
    out = model(images, tokens)
    loss = ContrastiveLoss(kind, local_loss=local_loss)(out.image_embedding, out.text_embedding, out.logit_scale)
    loss.backward()
    if isinstance(model, FullyShardedDataParallel):  # each rank holds a shard of each gradient
        with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
            return loss.item(), {name.replace(_CHECKPOINT_PREFIX, ""): p.grad.clone()
                                 for name, p in model.named_parameters()}
    return loss.item(), {name: p.grad for name, p in model.named_parameters()}


def _wrapped(model: Mammut, wrapper: str) -> nn.Module:
    if wrapper == "ddp":
        return DistributedDataParallel(model)
    if wrapper == "fsdp1":
        return wrap_as_fsdp_config(model)
    sharding.shard([model], [*model.vision.vit.blocks, *model.decoder.layers], init_device_mesh("cpu", (2,)))
    return model


def _full(gradient: torch.Tensor) -> torch.Tensor:
    return gradient.full_tensor() if hasattr(gradient, "full_tensor") else gradient


def _every_case_on_one_rank(rank: int) -> dict:
    images, tokens = global_batch()
    results = {}
    for wrapper in WRAPPERS:
        for split_name, split in SPLITS.items():
            rows = slice(sum(split[:rank]), sum(split[:rank + 1]))
            for kind, local_loss in LOSSES:
                model = _wrapped(tiny_model(), wrapper)
                loss, gradients = loss_and_gradients(model, images[rows], tokens[rows], kind, local_loss)
                names = [name.removeprefix("module.") for name in gradients]
                results[wrapper, split_name, kind, local_loss] = (
                    loss, {name: _full(g).reshape(-1) for name, g in zip(names, gradients.values())})
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return on_two_ranks(_every_case_on_one_rank, tmp_path_factory.mktemp("ranks"))


@pytest.mark.parametrize("kind,local_loss", LOSSES, ids=lambda v: str(v))
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_two_ranks_equal_one_process_on_the_whole_batch(two_ranks, wrapper, split, kind, local_loss):
    expected_loss, expected = loss_and_gradients(tiny_model(), *global_batch(), kind, local_loss)
    losses = [two_ranks[rank][wrapper, split, kind, local_loss][0] for rank in (0, 1)]
    # Each rank computes the whole loss, or (local_loss) its share: their mean is the loss.
    if not local_loss:
        assert losses == pytest.approx([expected_loss] * 2, rel=1e-5)
    assert sum(losses) / 2 == pytest.approx(expected_loss, rel=1e-5)
    for rank in (0, 1):
        gradients = two_ranks[rank][wrapper, split, kind, local_loss][1]
        assert gradients.keys() == expected.keys()
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, expected[name].reshape(-1), rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank}, {name}: {m}")


def test_a_per_rank_loss_would_differ():
    """The check above can fail: contrasting each half only with itself gives other gradients."""
    images, tokens = global_batch()
    _, whole = loss_and_gradients(tiny_model(), images, tokens, "infonce", False)
    halves = [loss_and_gradients(tiny_model(), images[rows], tokens[rows], "infonce", False)[1]
              for rows in (slice(0, 4), slice(4, 8))]
    averaged = (halves[0]["vision.vit.patch_embed.proj.weight"] + halves[1]["vision.vit.patch_embed.proj.weight"]) / 2
    assert not torch.allclose(averaged, whole["vision.vit.patch_embed.proj.weight"], rtol=1e-4, atol=1e-6)
