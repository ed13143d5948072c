"""Caption generation under FSDP1, wrapped as configs/strategy/fsdp.yaml wraps the model (2 gloo
processes on the CPU): the same tokens as the unsharded model, greedy and beam, KV cache on.

FSDP1 gathers a unit's weights only around that unit's ``forward``, so incremental decoding
must do all its work, the cross-attention keys and values of the image included, inside the
decoder layers' forward. Evaluation runs inside the root's forward, as Lightning runs
``validation_step``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from mammut import sharding
from mammut.model import GenerationConfig, Mammut, MammutConfig, generate

from distributed import on_two_ranks, wrap_as_fsdp_config

pytestmark = pytest.mark.slow

CONFIG = MammutConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2,
                      text_width=32, text_depth=2, text_heads=2, cross_attention_layers=[0, 1],
                      embed_dim=16, context_length=12, vocab_size=50)
SEARCHES = {"greedy": GenerationConfig(max_new_tokens=8, min_new_tokens=4),
            "beam": GenerationConfig(max_new_tokens=8, min_new_tokens=4, num_beams=3)}
COMPILED = GenerationConfig(max_new_tokens=8, compile=True)  # needs whole weights: refused here


class Captioner(nn.Module):
    """The root FSDP unit: generation runs inside its forward."""

    def __init__(self, model: Mammut):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, search: str) -> torch.Tensor:
        return generate(self.model, self.model.encode_image(images), config=SEARCHES[search])


def captioner() -> Captioner:
    torch.manual_seed(0)
    model = Mammut(CONFIG)
    # At their initial scale, random weights caption every image alike; a louder cross-attention
    # makes the tokens depend on the image.
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.cross_attention.proj.weight.normal_(std=2.0)
    return Captioner(model).eval()


def images() -> torch.Tensor:
    return torch.randn(4, 3, CONFIG.image_size, CONFIG.image_size, generator=torch.Generator().manual_seed(1))


def _captions_on_one_rank(rank: int) -> dict:
    wrapped = wrap_as_fsdp_config(captioner())
    with torch.no_grad():
        results = {search: wrapped(images(), search) for search in SEARCHES}
        results["compiled"] = _compiled_refusal(wrapped.module.model)
    # FSDP2, with the full weights held in place as for evaluation (plain parameters again).
    fsdp2 = captioner()
    sharding.shard([fsdp2.model], [*fsdp2.model.decoder.layers], init_device_mesh("cpu", (2,)))
    sharding.hold_full_weights(fsdp2, True)
    results["compiled_fsdp2"] = _compiled_refusal(fsdp2.model)
    return results


def _compiled_refusal(model: Mammut) -> str:
    """The error of a compiled generate call, refused before any unit's forward, so that no rank
    is left waiting in a collective."""
    try:
        with torch.no_grad():
            generate(model, torch.zeros(1, 16, CONFIG.vision_width), config=COMPILED)
    except ValueError as error:
        return str(error)
    return "no error"


def test_fsdp1_generates_the_tokens_of_the_unsharded_model(tmp_path):
    with torch.no_grad():
        expected = {search: captioner()(images(), search) for search in SEARCHES}
    assert len({tuple(row) for row in expected["greedy"].tolist()}) > 1, "captions should differ between images"
    for rank_result in on_two_ranks(_captions_on_one_rank, tmp_path):
        for search in SEARCHES:
            assert torch.equal(rank_result[search], expected[search]), search
        for sharded in ("compiled", "compiled_fsdp2"):
            assert "sharded" in rank_result[sharded], f"{sharded}: the compiled step must refuse sharded weights"
