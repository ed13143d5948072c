"""Cropped positional embeddings (RO-ViT): the crop-and-resize on hand-made grids, the crops' draw,
and the encoder using them in training only."""

from __future__ import annotations

import pytest
import torch

from mammut.model import Mammut, MammutConfig
from mammut.model.cropped_position import crop_position_grid, random_crops


def ramp(side: int) -> torch.Tensor:
    """(side, side, 2): channel 0 the column's x centre, channel 1 the row's y centre, as fractions."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    return torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)


def test_the_whole_crop_gives_the_grid_back_and_a_quarter_crop_its_quarter():
    grid = ramp(4)
    whole = crop_position_grid(grid, (12, 12), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))[0]
    # Upsampled and resampled back: the same grid, up to the border cells' clamped interpolation.
    assert torch.allclose(whole[1:-1, 1:-1], grid[1:-1, 1:-1], atol=1e-5)
    assert torch.allclose(whole, grid, atol=0.05)
    # The top-left quarter, resized to the whole grid: cell (r, c) shows position ((c + 0.5) / 8, (r + 0.5) / 8).
    quarter = crop_position_grid(grid, (12, 12), torch.tensor([[0.0, 0.0, 0.5, 0.5]]))[0]
    assert torch.allclose(quarter[1:, 1:], ramp(4)[1:, 1:] / 2, atol=0.03)
    # The right half keeps the rows and takes the right columns.
    right = crop_position_grid(grid, (12, 12), torch.tensor([[0.5, 0.0, 1.0, 1.0]]))[0]
    assert torch.allclose(right[..., 1], whole[..., 1], atol=1e-5)
    assert torch.allclose(right[:, :-1, 0], 0.5 + grid[:, :-1, 0] / 2, atol=0.03)
    assert right[..., 0].min() > 0.5


def test_each_image_gets_its_own_crop_and_the_grid_learns_through_it():
    grid = ramp(4).requires_grad_()
    crops = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    out = crop_position_grid(grid, (8, 8), crops)
    assert out.shape == (2, 4, 4, 2) and out[0, ..., 0].mean() < 0.5 < out[1, ..., 0].mean()
    out.sum().backward()
    assert grid.grad is not None and grid.grad.abs().sum() > 0


def test_crops_cover_their_drawn_area_and_aspect_and_stay_inside():
    generator = torch.Generator().manual_seed(0)
    crops = random_crops(2000, (0.1, 1.0), (0.5, 2.0), generator=generator)
    x0, y0, x1, y1 = crops.unbind(dim=1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 1 + 1e-6).all() and (y1 <= 1 + 1e-6).all()
    width, height = x1 - x0, y1 - y0
    unclipped = (width < 1) & (height < 1)
    area, aspect = (width * height)[unclipped], (width / height)[unclipped]
    assert area.min() >= 0.1 - 1e-5 and area.max() <= 1 + 1e-5
    assert aspect.min() >= 0.5 - 1e-4 and aspect.max() <= 2 + 1e-4
    assert area.std() > 0.15  # spread over the range, not one size
    same = random_crops(5, (0.1, 1.0), (0.5, 2.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(same, random_crops(5, (0.1, 1.0), (0.5, 2.0), generator=torch.Generator().manual_seed(3)))


def tiny(**fields) -> MammutConfig:
    return MammutConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_width=32,
                        text_depth=1, text_heads=2, cross_attention_layers=[0], embed_dim=32, vocab_size=64,
                        context_length=8, **fields)


def test_the_encoder_crops_in_training_and_takes_the_embedding_as_it_is_otherwise():
    torch.manual_seed(0)
    with_cpe = Mammut(tiny(cpe_grid=8))
    plain = Mammut(tiny())
    plain.load_state_dict(with_cpe.state_dict())  # CPE adds no parameter
    images = torch.randn(2, 3, 32, 32)
    with_cpe.eval(), plain.eval()
    assert torch.equal(with_cpe.encode_image(images), plain.encode_image(images))
    with_cpe.train()
    first, second = with_cpe.encode_image(images), with_cpe.encode_image(images)
    assert not torch.allclose(first, second)  # a fresh crop per step
    first.sum().backward()
    assert with_cpe.vision.vit.pos_embed.grad.abs().sum() > 0


def test_cpe_settings_are_checked():
    with pytest.raises(ValueError, match="cpe_grid 2 must be at least"):
        tiny(cpe_grid=2)
    with pytest.raises(ValueError, match="cpe_crop_scale"):
        tiny(cpe_grid=8, cpe_crop_scale=(0.0, 1.0))
