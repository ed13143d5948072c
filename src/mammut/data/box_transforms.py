"""Image transforms that move boxes with the pixels: PIL image and ``[x, y, w, h]`` pixel boxes ->
normalised float tensor (3, S, S) and boxes ``(cx, cy, w, h)`` as fractions of it.

Evaluation resizes the whole image to a square exactly as ``transforms.image_transform`` does, so a
detector sees at test time the images the other tasks see. Training adds two usual detection
augmentations: a horizontal flip, which no category name depends on, and scale jitter, a random
crop of a fraction of the image resized to the full output, which shows objects larger than they
appear in the file. Unlike the caption and VQA transforms, a crop is safe here: every object it
cuts keeps a box clipped to what is left of it, and one with too little left is dropped and
counted instead of labelling an empty patch.

The randomness comes from the ``random.Random`` the caller passes (the dataset's per-sample
draw), so a sample is the same whatever the worker that loads it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_convert
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mammut.data.transforms import CLIP_MEAN, CLIP_STD


@dataclass
class BoxedImage:
    image: Tensor  # (3, S, S) float, normalised
    boxes: Tensor  # (N', 4) float: cx, cy, w, h as fractions of the output image
    keep: Tensor  # (N,) bool: which input boxes are in ``boxes``, to filter their labels alike
    crowd_boxes: Tensor  # (C', 4) float, as ``boxes``
    boxes_dropped: int  # input boxes dropped as too small once clipped


@dataclass(frozen=True)
class _Window:
    """Where the output comes from: the image, flipped or not, cropped to a window (pixels)."""

    flip: bool
    left: int
    top: int
    width: int
    height: int


class DetectionTransform:
    """The transform for one split.

    Args:
        image_size: side S of the square output, in pixels.
        train: the training split; only it applies the augmentations.
        flip: in training, flip horizontally with probability 0.5.
        scale_range: in training, the crop's side as a fraction of each image side, drawn
            uniformly from this range; (1.0, 1.0) turns scale jitter off.
        min_box_size: in training, a box whose clipped width or height is below this many
            output pixels is dropped. Evaluation drops only a box left empty by clipping to the
            image (a metric must see every annotated object).
        mean, std: per-channel normalisation (default: OpenAI CLIP).
    """

    def __init__(self, image_size: int, train: bool, flip: bool = True,
                 scale_range: tuple[float, float] = (0.6, 1.0), min_box_size: float = 1.0,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        low, high = scale_range
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {scale_range}")
        if min_box_size < 0:
            raise ValueError(f"min_box_size must not be negative, got {min_box_size}")
        self.image_size = image_size
        self.train = train
        self.flip = flip
        self.scale_range = (float(low), float(high))
        self.min_box_size = float(min_box_size)
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Image.Image, boxes: Tensor, crowd_boxes: Tensor, rng: random.Random) -> BoxedImage:
        """``boxes`` (N, 4) and ``crowd_boxes`` (C, 4): ``[x, y, w, h]`` in the image's pixels."""
        for name, value in (("boxes", boxes), ("crowd_boxes", crowd_boxes)):
            if value.ndim != 2 or value.shape[1] != 4:
                raise ValueError(f"{name} must be of shape (N, 4) [x, y, w, h], got {tuple(value.shape)}")
        window = self._crop_window(image.size, rng) if self.train else _Window(False, 0, 0, *image.size)
        pixels = F.to_image(image)
        if window.flip:
            pixels = F.horizontal_flip(pixels)
        if (window.width, window.height) != image.size:
            pixels = F.crop(pixels, window.top, window.left, window.height, window.width)
        pixels = F.resize(pixels, [self.image_size, self.image_size],
                          interpolation=InterpolationMode.BICUBIC, antialias=True)
        pixels = F.normalize(F.to_dtype(pixels, torch.float32, scale=True), mean=self.mean, std=self.std)
        kept, keep = self._place(boxes, window, image.size[0])
        crowd, _ = self._place(crowd_boxes, window, image.size[0])  # regions to ignore: dropped uncounted
        return BoxedImage(image=pixels.as_subclass(Tensor), boxes=kept, keep=keep, crowd_boxes=crowd,
                          boxes_dropped=int((~keep).sum()))

    def _crop_window(self, size: tuple[int, int], rng: random.Random) -> _Window:
        """A training draw, always in this order: the flip, the scale, the crop's position."""
        width, height = size
        flip = self.flip and rng.random() < 0.5
        scale = rng.uniform(*self.scale_range)
        crop_width, crop_height = max(1, round(scale * width)), max(1, round(scale * height))
        left, top = rng.randint(0, width - crop_width), rng.randint(0, height - crop_height)
        return _Window(flip, left, top, crop_width, crop_height)

    def _place(self, boxes: Tensor, window: _Window, image_width: int) -> tuple[Tensor, Tensor]:
        """Boxes seen through ``window``, kept ones only, as (cx, cy, w, h) fractions of the
        output, and which were kept."""
        corners = box_convert(boxes.float(), "xywh", "xyxy")
        x0, y0, x1, y1 = corners.unbind(1)
        if window.flip:
            x0, x1 = image_width - x1, image_width - x0
        x0, x1 = ((x - window.left).clamp(0, window.width) / window.width for x in (x0, x1))
        y0, y1 = ((y - window.top).clamp(0, window.height) / window.height for y in (y0, y1))
        fractions = torch.stack([x0, y0, x1, y1], dim=1)
        side = torch.minimum(x1 - x0, y1 - y0) * self.image_size  # output pixels
        keep = side > 0
        if self.train:
            keep &= side >= self.min_box_size
        return box_convert(fractions[keep], "xyxy", "cxcywh"), keep
