"""Sparse video tubes: a clip becomes a few hundred tokens for the image ViT, encoded once.

After TubeViT (Piergiovanni et al., "Rethinking Video ViTs: Sparse Video Tubes", arXiv
2212.03229), which MaMMUT uses for video (MaMMUT Sec. 3.4):

- Several tube shapes, each a 3D convolution with its own kernel, stride and offset (Sec. 3.1):
  a cube, a long thin tube that follows motion over many frames, a wide flat one, and a
  single-frame patch. Sparse strides keep the token count near that of one image.
- Each token gets the fixed 3D sin-cos position embedding of its tube's centre in (time, y, x)
  (Sec. 3.2), so tokens of different shapes that cover the same place and time agree; one
  learned gain sets its size.
- The kernels start from the image model's 2D patch embedding (Sec. 3.3): resized to the
  tube's spatial size and spread evenly over its frames, as I3D inflates 2D filters (Carreira
  and Zisserman 2017, Sec. 2.2). On a clip of one repeated frame each tube then responds as the
  2D patch embedding does to that frame, so a pretrained image model works on video at once.
  The single-frame tube is the image model's own patch embedding, applied to the frames it picks.
- A tube may instead start as a motion detector (``init: motion``): the same spatial kernel
  (or a random one, where the image model has no linear patch embedding) weighted by a
  zero-mean ramp over its frames, so that it embeds the difference between the tube's late and
  early frames. It is silent on a static clip, and a moving edge gives a token whose sign
  follows the direction of travel. An inflated kernel averages motion away, and one learned
  from random start must find it in the data first.
- A tube may start as a bank of velocity detectors (``init: velocity``): output channel k weighs
  the pixels of a colour mix a_k by a zero-mean ramp over the frames times a spatial ramp along
  an orientation θ_k, so that it measures how far the window's a_k-weighted centre of mass moves
  along θ_k (the first-order spatio-temporal filters of motion-energy models, Adelson and Bergen
  1985, without the squaring). A direction of motion is then a linear function of one token,
  where the other inits leave it to the blocks to compare the positions of two tokens.
- ``dilation`` spreads a kernel's taps, so that a tube sees a wide window at the cost of a small one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# How a tube's 3D kernel starts: inflated from the 2D patch kernel, as a temporal derivative, or
# as a bank of velocity detectors.
TUBE_INITS = ("inflate", "motion", "velocity")


@dataclass(frozen=True)
class TubeShape:
    """One tube: a kernel of (frames, height, width), moved by ``stride`` from ``offset``, whose
    weights start as ``init`` (one of ``TUBE_INITS``)."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    offset: tuple[int, int, int] = (0, 0, 0)
    init: str = "inflate"
    dilation: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self):
        if self.init not in TUBE_INITS:
            raise ValueError(f"tube init must be one of {TUBE_INITS}, got {self.init!r}")
        if self.init in ("motion", "velocity") and self.kernel[0] < 2:
            raise ValueError(f"a {self.init} tube needs at least 2 frames to compare, got kernel {self.kernel}")
        if self.init == "velocity" and min(self.kernel[1:]) < 2:
            raise ValueError(f"a velocity tube needs at least 2 pixels a side to place a motion, got kernel {self.kernel}")
        if min(self.dilation) < 1:
            raise ValueError(f"tube dilation must be 1 or more, got {self.dilation}")

    @property
    def extent(self) -> tuple[int, int, int]:
        """(frames, height, width) that one tube covers: its kernel, spread by its dilation."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def grid(self, frames: int, size: int) -> tuple[int, int, int]:
        """Tubes along (time, y, x) in a clip of ``frames`` frames of ``size`` × ``size`` pixels."""
        counts = tuple((extent - offset - covered) // stride + 1 for extent, offset, covered, stride
                       in zip((frames, size, size), self.offset, self.extent, self.stride))
        if min(counts) < 1:
            raise ValueError(f"tube {self} does not fit a clip of {frames} frames of {size}x{size} pixels")
        return counts

    def centres(self, frames: int, size: int) -> Tensor:
        """(N, 3) centre of each tube in (time, y, x), in frames and pixels, in token order."""
        axes = [offset + torch.arange(count) * stride + (covered - 1) / 2 for count, offset, stride, covered
                in zip(self.grid(frames, size), self.offset, self.stride, self.extent)]
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
    return resized_patch_kernel(weight, height, width).unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames


def temporal_ramp(frames: int) -> Tensor:
    """(frames,) weights rising linearly through zero, the later half summing to 1: applied to a
    clip that changes from A to B half-way, they give B - A; applied to a static clip, 0."""
    ramp = torch.arange(frames, dtype=torch.float64) - (frames - 1) / 2
    return (ramp / ramp.clamp(min=0).sum()).float()


def motion_kernel(spatial: Tensor, frames: int) -> Tensor:
    """A 2D kernel (C_out, C_in, h, w) as a 3D kernel (C_out, C_in, frames, h, w) that embeds the
    ramp-weighted difference between the late and the early frames (``temporal_ramp``)."""
    return spatial.unsqueeze(2) * temporal_ramp(frames).to(spatial)[:, None, None]


def velocity_kernel(width: int, kernel: tuple[int, int, int]) -> Tensor:
    """(width, 3, t, h, w): output channel k = (a_k · pixel) × temporal ramp × spatial ramp along θ_k.

    θ_k turns evenly through the circle and a_k is a random unit colour mix. The spatial ramp runs
    from -1 to 1 across the window and is averaged over its pixels, so a blob of a_k-contrast c
    covering a fraction f of the window, whose centre moves by d (in half-windows) along θ_k
    between the early and the late frames, gives about c · f · d: positive one way, negative the
    other, and 0 on a static clip."""
    frames, height, side = kernel
    angles = torch.arange(width, dtype=torch.float64) * (2 * torch.pi / width)
    colours = torch.randn(width, 3, dtype=torch.float64)
    colours = colours / colours.norm(dim=1, keepdim=True)
    ys, xs = torch.linspace(-1, 1, height, dtype=torch.float64), torch.linspace(-1, 1, side, dtype=torch.float64)
    spatial = (angles.cos()[:, None, None] * xs + angles.sin()[:, None, None] * ys[:, None]) / (height * side)
    ramp = temporal_ramp(frames).double()
    return (colours[:, :, None, None, None] * ramp[:, None, None] * spatial[:, None, None]).float()


def resized_patch_kernel(weight: Tensor, height: int, width: int) -> Tensor:
    """A 2D patch kernel resized to (height, width), its sum over each window kept."""
    p_h, p_w = weight.shape[-2:]
    if (height, width) == (p_h, p_w):
        return weight
    return F.interpolate(weight.float(), size=(height, width), mode="bilinear", align_corners=False) * (
        p_h * p_w / (height * width))


class SparseTubes(nn.Module):
    """Clip (B, 3, T, H, W) -> tube tokens (B, N, width), each with its 3D position added.

    A tube of kernel (1, p, p) with spatial stride p and no spatial offset, where p is the image
    model's patch size, is the image path itself on the frames it picks: those frames go through
    the image model's own patch embedding and learned 2D position embedding
    (``frame_embedding``), so a clip's frame tokens are an image's tokens, whatever that
    embedding is (a linear patch or a convolutional stem). "An image is the one-frame case of the
    same path." Every other tube is a 3D convolution of its own.
    """

    def __init__(self, shapes: list[TubeShape], width: int, frames: int, image_size: int, patch_size: int,
                 patch_embedding: nn.Conv2d | None = None):
        super().__init__()
        self.shapes, self.frames, self.image_size, self.patch_size = list(shapes), frames, image_size, patch_size
        for shape in self.shapes:
            shape.grid(frames, image_size)  # every tube fits the clip
        self.kernels = nn.ModuleDict({str(i): nn.Conv3d(3, width, shape.kernel, shape.stride, dilation=shape.dilation)
                                      for i, shape in enumerate(self.shapes) if not self.is_frame_tube(shape)})
        positions = torch.cat([shape.centres(frames, image_size) for shape in self.shapes])
        self.register_buffer("position_embedding", sincos_3d(positions, width), persistent=False)
        # The fixed embedding's gain, learned, from 1 as TubeViT adds it. Sin-cos values are of
        # the order of the tokens themselves: loud enough for the blocks to tell early tubes from
        # late ones, which the directions of motion and changes of size need.
        self.position_scale = nn.Parameter(torch.ones(1))
        with torch.no_grad():  # the starts that need no image model (motion: a random 2D kernel, as a patch embedding starts)
            for index, conv in self.kernels.items():
                init = self.shapes[int(index)].init
                if init == "motion":
                    spatial = torch.empty(conv.weight.shape[:2] + conv.weight.shape[3:])
                    nn.init.kaiming_uniform_(spatial, a=5 ** 0.5)  # nn.Conv2d's own initialisation
                    conv.weight.copy_(motion_kernel(spatial, conv.weight.shape[2]))
                elif init == "velocity":
                    # At the scale of nn.Conv3d's own initialisation: an optimizer step of a given
                    # size then changes it as much, relative to its size, as any other kernel.
                    velocity = velocity_kernel(width, self.shapes[int(index)].kernel)
                    default_rms = (3 * conv.weight[0].numel()) ** -0.5
                    conv.weight.copy_(velocity * (default_rms / velocity.pow(2).mean().sqrt()))
                    conv.bias.zero_()
        if patch_embedding is not None:
            self.initialise_from(patch_embedding)

    def is_frame_tube(self, shape: TubeShape) -> bool:
        p = self.patch_size
        return (shape.kernel == (1, p, p) and shape.stride[1:] == (p, p) and shape.offset[1:] == (0, 0)
                and shape.dilation == (1, 1, 1))

    @property
    def num_tokens(self) -> int:
        return len(self.position_embedding)

    @torch.no_grad()
    def initialise_from(self, patch_embedding: nn.Conv2d) -> None:
        """Every 3D tube kernel from the image model's linear patch embedding (TubeViT Sec. 3.3):
        inflated, or, for a motion tube, as the temporal derivative of the resized patch kernel.
        Velocity tubes keep their own start: they measure motion, not the patch's appearance."""
        for index, conv in self.kernels.items():
            shape = self.shapes[int(index)]
            if shape.init == "velocity":
                continue
            frames, height, width = shape.kernel
            conv.weight.copy_(motion_kernel(resized_patch_kernel(patch_embedding.weight, height, width), frames)
                              if shape.init == "motion" else inflate_patch_kernel(patch_embedding.weight, shape.kernel))
            if patch_embedding.bias is not None:
                conv.bias.copy_(patch_embedding.bias)
            else:  # a bias-free patch embedding (CLIP's ViTs): no bias in the tubes either
                conv.bias.zero_()

    def forward(self, clips: Tensor, frame_embedding: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``frame_embedding``: frames (B', 3, H, W) -> their image-path tokens (B', H/p * W/p, width),
        positions included; needed when a tube is a frame tube."""
        if clips.shape[2:] != (self.frames, self.image_size, self.image_size):
            raise ValueError(f"clips must be (B, 3, {self.frames}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(clips.shape)}")
        tokens = []
        for index, shape in enumerate(self.shapes):
            t, y, x = shape.offset
            if self.is_frame_tube(shape):
                if frame_embedding is None:
                    raise ValueError(f"tube {shape} is a frame tube: pass the image path's frame_embedding")
                picked = clips[:, :, t::shape.stride[0]][:, :, :shape.grid(self.frames, self.image_size)[0]]
                batch, _, count = picked.shape[:3]
                frame_tokens = frame_embedding(picked.transpose(1, 2).flatten(0, 1))  # (B * count, N_frame, width)
                _, per_frame, width = frame_tokens.shape  # explicit: an empty batch (a rank of bad samples) too
                tokens.append(frame_tokens.reshape(batch, count * per_frame, width))
            else:
                conv = self.kernels[str(index)]
                tokens.append(conv(clips[:, :, t:, y:, x:]).flatten(2).transpose(1, 2))  # (B, N_tube, width)
        return torch.cat(tokens, dim=1) + (self.position_scale * self.position_embedding).to(tokens[0].dtype)
