"""Alternatives to the ViT's plain patch embedding (one linear map per non-overlapping patch).

Both keep the token grid at image_size / patch_size, so everything after the embedding is the
ViT the config names. They matter most for small objects at low resolution, where a plain patch
cuts a 10-pixel shape in two and each half is embedded blind to the other.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def overlapping_patches(patch_embedding: nn.Conv2d, overlap: int, keep_weights: bool) -> nn.Conv2d:
    """The patch embedding with its window widened by ``overlap`` pixels on every side, same stride.

    With ``keep_weights`` (loaded from a file) the old kernel sits at the centre of the new one and
    the border starts at zero, so the encoder starts out computing what the file's weights compute.
    """
    (patch, _), width = patch_embedding.kernel_size, patch_embedding.out_channels
    wide = nn.Conv2d(patch_embedding.in_channels, width, kernel_size=patch + 2 * overlap,
                     stride=patch_embedding.stride, padding=overlap)
    if keep_weights:
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[:, :, overlap:overlap + patch, overlap:overlap + patch] = patch_embedding.weight
            wide.bias.copy_(patch_embedding.bias)
    return wide


class ConvStem(nn.Sequential):
    """A convolutional stem in place of the patch embedding (Xiao et al. 2021, "Early
    Convolutions Help Transformers See Better", Sec. 3): log2(patch) 3x3 convolutions of stride
    2 with BatchNorm and ReLU, channels doubling up to ``width``, then a 1x1 convolution. The stem
    costs about as much as one transformer block; Xiao et al. remove a block to compensate.

    (B, 3, H, W) -> (B, width, H / patch, W / patch), the same as the patch embedding it replaces.
    """

    def __init__(self, in_channels: int, width: int, patch_size: int):
        steps = round(math.log2(patch_size))
        if 2 ** steps != patch_size or steps < 1:
            raise ValueError(f"a conv stem needs a power-of-two patch_size, got {patch_size}")
        if width % 2 ** (steps - 1):
            raise ValueError(f"a conv stem of {steps} steps needs a width divisible by {2 ** (steps - 1)}, "
                             f"got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        for step in range(steps):
            out = width // 2 ** (steps - 1 - step)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        layers.append(nn.Conv2d(channels, width, 1))
        super().__init__(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # oneDNN's CPU convolutions run faster on channels-last tensors (bench/patch_embedding.py).
        return super().forward(images.contiguous(memory_format=torch.channels_last))
