"""Token fusion and the chunked caption loss under FSDP2, as ``ShardingHooks.configure_model``
shards a model: two gloo ranks, each with half the batch, give the loss and gradients of one
process on the whole batch with the full logits."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh

from mammut import sharding
from mammut.model import ContrastiveLoss, Mammut, MammutConfig, caption_loss

from distributed import on_two_ranks

pytestmark = pytest.mark.slow

CONFIG = MammutConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2, text_width=32,
                      text_depth=2, text_heads=2, cross_attention_layers=[1], embed_dim=16, context_length=10,
                      vocab_size=50, fusion_vision_block=0, fusion_tokens=4, decoder_fusion="iterative")


def fused_model() -> Mammut:
    torch.manual_seed(0)
    return Mammut(CONFIG)


def whole_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four images and full-length captions (as many targets on each rank: the mean of the ranks'
    caption losses is the whole batch's)."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, CONFIG.vocab_size, (4, CONFIG.context_length), generator=generator)
    tokens[:, 0], tokens[:, -1] = CONFIG.bos_id, CONFIG.eos_id
    return torch.randn(4, 3, 32, 32, generator=generator), tokens


def loss_and_gradients(model: Mammut, images, tokens, chunked: bool) -> tuple[float, dict[str, torch.Tensor]]:
    out = model(images, tokens, caption_logits=not chunked)
    captioning = (model.chunked_caption_loss(out.caption_hidden, tokens[:, 1:], CONFIG.pad_id, 0.1, chunk_tokens=5)
                  if chunked
                  else caption_loss(out.caption_logits, tokens[:, 1:], CONFIG.pad_id, 0.1))
    loss = ContrastiveLoss()(out.image_embedding, out.text_embedding, out.logit_scale) + captioning
    loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters()}
    return loss.item(), {name: (g.full_tensor() if hasattr(g, "full_tensor") else g).clone()
                         for name, g in gradients.items()}


def _sharded_half(rank: int) -> tuple[float, dict[str, torch.Tensor]]:
    images, tokens = whole_batch()
    model = fused_model()
    sharding.shard([model], model.transformer_blocks(), init_device_mesh("cpu", (2,)),
                   {model: list(model.fsdp_entry_points)})
    rows = slice(2 * rank, 2 * rank + 2)
    return loss_and_gradients(model, images[rows], tokens[rows], chunked=True)


def test_two_sharded_ranks_with_the_chunked_loss_equal_one_process_with_the_full_logits(tmp_path):
    expected_loss, expected = loss_and_gradients(fused_model(), *whole_batch(), chunked=False)
    ranks = on_two_ranks(_sharded_half, tmp_path)
    assert sum(loss for loss, _ in ranks) / 2 == pytest.approx(expected_loss, rel=1e-5)
    for rank, (_, gradients) in enumerate(ranks):
        assert gradients.keys() == expected.keys()
        assert any("learner" in name for name in gradients)
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, expected[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank}, {name}: {m}")
