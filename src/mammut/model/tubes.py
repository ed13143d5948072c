"""Sparse video tubes: a clip becomes a few hundred tokens for the image ViT, encoded once.

After TubeViT (Piergiovanni et al., "Rethinking Video ViTs: Sparse Video Tubes", arXiv
2212.03229), which MaMMUT uses for video (MaMMUT Sec. 3.4):

- Several tube shapes, each a 3D convolution with its own kernel, stride and offset (Sec. 3.1):
  a cube, a long thin tube that follows motion over many frames, a wide flat one, and a
  single-frame patch. Sparse strides keep the token count near that of one image.
- Each token gets the fixed 3D sin-cos position embedding of its tube's centre in (time, y, x)
  (Sec. 3.2), so tokens of different shapes that cover the same place and time agree.
- The kernels start from the image model's 2D patch embedding (Sec. 3.3): resized to the
  tube's spatial size and spread evenly over its frames, as I3D inflates 2D filters (Carreira
  and Zisserman 2017, Sec. 2.2). On a clip of one repeated frame each tube then responds as the
  2D patch embedding does to that frame, so a pretrained image model works on video at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TubeShape:
    """One tube: a kernel of (frames, height, width), moved by ``stride`` from ``offset``."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    offset: tuple[int, int, int] = (0, 0, 0)

    def grid(self, frames: int, size: int) -> tuple[int, int, int]:
        """Tubes along (time, y, x) in a clip of ``frames`` frames of ``size`` × ``size`` pixels."""
        counts = tuple((extent - offset - kernel) // stride + 1 for extent, offset, kernel, stride
                       in zip((frames, size, size), self.offset, self.kernel, self.stride))
        if min(counts) < 1:
            raise ValueError(f"tube {self} does not fit a clip of {frames} frames of {size}x{size} pixels")
        return counts

    def centres(self, frames: int, size: int) -> Tensor:
        """(N, 3) centre of each tube in (time, y, x), in frames and pixels, in token order."""
        axes = [offset + torch.arange(count) * stride + (kernel - 1) / 2 for count, offset, stride, kernel
                in zip(self.grid(frames, size), self.offset, self.stride, self.kernel)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3).float()


def sincos_3d(positions: Tensor, width: int, temperature: float = 10_000.0) -> Tensor:
    """Fixed sin-cos embedding of (N, 3) positions: a third of the width per axis (TubeViT Sec. 3.2)."""
    if width % 6:
        raise ValueError(f"a 3D sin-cos embedding needs a width divisible by 6, got {width}")
    frequencies = temperature ** -(torch.arange(width // 6, dtype=torch.float64) / (width // 6))
    angles = positions.double()[:, :, None] * frequencies  # (N, 3, width / 6)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(len(positions), width).float()


def inflate_patch_kernel(weight: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """A 2D patch kernel (C_out, C_in, p, p) as a 3D tube kernel (C_out, C_in, t, h, w).

    Resized to (h, w) with its sum over each window kept (the response to a flat region does
    not change), then spread evenly over t frames.
    """
    frames, height, width = kernel
    p_h, p_w = weight.shape[-2:]
    resized = weight if (height, width) == (p_h, p_w) else \
        F.interpolate(weight.float(), size=(height, width), mode="bilinear", align_corners=False) * (
            p_h * p_w / (height * width))
    return resized.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames


class SparseTubes(nn.Module):
    """Clip (B, 3, T, H, W) -> tube tokens (B, N, width), each with its 3D position added."""

    def __init__(self, shapes: list[TubeShape], width: int, frames: int, image_size: int,
                 patch_embedding: nn.Conv2d | None = None):
        super().__init__()
        self.shapes, self.frames, self.image_size = list(shapes), frames, image_size
        self.kernels = nn.ModuleList(nn.Conv3d(3, width, shape.kernel, shape.stride) for shape in self.shapes)
        positions = torch.cat([shape.centres(frames, image_size) for shape in self.shapes])
        self.register_buffer("position_embedding", sincos_3d(positions, width), persistent=False)
        if patch_embedding is not None:
            self.initialise_from(patch_embedding)

    @property
    def num_tokens(self) -> int:
        return len(self.position_embedding)

    @torch.no_grad()
    def initialise_from(self, patch_embedding: nn.Conv2d) -> None:
        """Every tube kernel from the image model's patch embedding (TubeViT Sec. 3.3)."""
        for shape, conv in zip(self.shapes, self.kernels):
            conv.weight.copy_(inflate_patch_kernel(patch_embedding.weight, shape.kernel))
            if patch_embedding.bias is not None:
                conv.bias.copy_(patch_embedding.bias)

    def forward(self, clips: Tensor) -> Tensor:
        if clips.shape[2:] != (self.frames, self.image_size, self.image_size):
            raise ValueError(f"clips must be (B, 3, {self.frames}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(clips.shape)}")
        tokens = []
        for shape, conv in zip(self.shapes, self.kernels):
            t, y, x = shape.offset
            tokens.append(conv(clips[:, :, t:, y:, x:]).flatten(2).transpose(1, 2))  # (B, N_tube, width)
        return torch.cat(tokens, dim=1) + self.position_embedding.to(clips.dtype)
