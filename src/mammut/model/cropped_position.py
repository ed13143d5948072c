"""Cropped positional embeddings (CPE; RO-ViT, Kim et al. 2023, arXiv 2305.07011, Sec. 3.1; MaMMUT Sec. 3.4).

A detector runs at a higher resolution than pretraining and sees objects anywhere in a large image,
while pretraining only ever sees whole images at a small one: the position embedding it learns is
one of whole images. CPE closes that gap during pretraining: the position embedding is upsampled to
the detection grid, a random region of it is cropped and resized back to the pretraining grid, and
that crop is what the patches get. Each image thus looks like a region of a larger one, as its
objects will in detection. Evaluation and every later use take the embedding as it is.

As in RO-ViT's code (google-research ``fvlm/rovit/cropped_positional_embedding.py``), the crop is
drawn per image as RandomResizedCrop draws one, by area fraction (0.1 to 1) and aspect ratio (0.5 to
2), both settings; the crop and resize are one bilinear resampling of the upsampled grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crops(batch: int, scale: tuple[float, float], aspect: tuple[float, float],
                 device: torch.device | None = None, generator: torch.Generator | None = None) -> Tensor:
    """(batch, 4) crops ``x0, y0, x1, y1`` as fractions of the grid: each covers a fraction of the
    area drawn uniformly from ``scale``, with an aspect ratio (width / height) drawn log-uniformly
    from ``aspect``, clipped to the grid, at a uniform position."""
    draws = torch.rand(batch, 4, generator=generator, device=device)
    area = scale[0] + (scale[1] - scale[0]) * draws[:, 0]
    log_aspect = math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * draws[:, 1]
    width = (area * log_aspect.exp()).sqrt().clamp(max=1.0)
    height = (area / log_aspect.exp()).sqrt().clamp(max=1.0)
    x0, y0 = (1 - width) * draws[:, 2], (1 - height) * draws[:, 3]
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=1)


def crop_position_grid(grid: Tensor, upsampled: tuple[int, int], crops: Tensor) -> Tensor:
    """Per crop, the position ``grid`` (h, w, C) upsampled to ``upsampled``, cropped to the region and
    resized back to (h, w), all bilinearly as RO-ViT's code does: (B, h, w, C)."""
    height, width, channels = grid.shape
    large = F.interpolate(grid.permute(2, 0, 1)[None].float(), size=upsampled, mode="bilinear", align_corners=False)
    # One affine sampling grid per crop: output cell centres mapped into the crop, in the [-1, 1]
    # coordinates of grid_sample (align_corners=False: -1 and 1 are the outer edges of the grid).
    x0, y0, x1, y1 = (crops.to(large) * 2 - 1).unbind(dim=1)
    theta = torch.zeros(len(crops), 2, 3, dtype=large.dtype, device=large.device)
    theta[:, 0, 0], theta[:, 0, 2] = (x1 - x0) / 2, (x0 + x1) / 2
    theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / 2, (y0 + y1) / 2
    sampling = F.affine_grid(theta, [len(crops), channels, height, width], align_corners=False)
    cropped = F.grid_sample(large.expand(len(crops), -1, -1, -1), sampling, mode="bilinear",
                            padding_mode="border", align_corners=False)
    return cropped.permute(0, 2, 3, 1).to(grid.dtype)
