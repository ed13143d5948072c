"""Image transforms: PIL image -> normalised float tensor (3, H, W), with torchvision v2.

The default pipeline is a plain resize of the whole image to a square, with no crop,
flip or colour jitter. In the demo world left/right, colour and size are what captions
and questions are about, so those augmentations would turn true labels into false ones;
a crop could also cut away the object a caption mentions. A random resized crop is an
opt-in for real datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

# The OpenAI CLIP statistics, which timm's CLIP-pretrained ViTs also expect; the default.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_transform(
    image_size: int,
    train: bool,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    random_resized_crop_scale: tuple[float, float] | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """The transform for one split.

    Args:
        image_size: side of the square output, in pixels.
        train: the training split; only it applies the opt-in augmentation.
        mean, std: per-channel normalisation (default: OpenAI CLIP).
        random_resized_crop_scale: if set (e.g. ``(0.8, 1.0)``), training takes a random
            crop covering this fraction of the area, resized to ``image_size``.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if train and random_resized_crop_scale is not None:
        resize = v2.RandomResizedCrop(
            image_size, scale=random_resized_crop_scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )
    else:
        resize = v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return v2.Compose(
        [
            v2.ToImage(),
            resize,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def clip_transform(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Frames (T, H, W, 3) uint8 -> a clip (3, T, image_size, image_size), still uint8, each frame
    resized as ``image_transform`` resizes an image (no augmentation, for the same reasons).

    Clips leave the loader workers as uint8, a quarter of the bytes of floats to stack and pass
    between processes; ``normalize_clips`` makes them floats once the batch is on its device."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    resize = v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)

    def transform(frames: torch.Tensor) -> torch.Tensor:
        return resize(frames.permute(0, 3, 1, 2)).transpose(0, 1)  # (T, 3, H, W) -> (3, T, H, W)

    return transform


def normalize_clips(clips: torch.Tensor, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """uint8 clips (B, 3, T, H, W) -> floats normalised as ``image_transform`` normalises images."""
    if clips.dtype != torch.uint8:
        raise TypeError(f"expected uint8 clips from clip_transform, got {clips.dtype}")
    # (x / 255 - mean) / std as one scale and one shift, in place on the new float tensor.
    shape = (1, 3, 1, 1, 1)
    std_t = torch.tensor(std, device=clips.device).view(shape)
    scale, shift = 1 / (255 * std_t), torch.tensor(mean, device=clips.device).view(shape) / std_t
    return clips.float().mul_(scale).sub_(shift)


def denormalize(images: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Undo ``Normalize``: (B, 3, H, W) images or (B, 3, T, H, W) clips back to [0, 1] pixels, for display."""
    shape = (1, 3) + (1,) * (images.ndim - 2)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(shape)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(shape)
    return (images * std_t + mean_t).clamp(0, 1)
