"""Pictures for TensorBoard: images with text drawn underneath (TensorBoard has no caption field)."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


def frame_strips(clips: Tensor, max_frames: int = 8) -> Tensor:
    """Clips (B, 3, T, H, W) -> (B, 3, H, k * W): ``k`` = up to ``max_frames`` frames, evenly
    spread from the first to the last, side by side in time order."""
    frames = clips.shape[2]
    chosen = torch.linspace(0, frames - 1, min(frames, max_frames)).round().long().unique()
    picked = clips[:, :, chosen.to(clips.device)]  # (B, 3, k, H, W)
    return picked.permute(0, 1, 3, 2, 4).flatten(3)  # (B, 3, H, k, W) -> (B, 3, H, k * W)


def captioned_images(images: Tensor, texts: list[str], scale: int = 3, lines: int = 4) -> Tensor:
    """images: (B, 3, H, W), or clips (B, 3, T, H, W) shown as strips of frames, in [0, 1].
    Returns (B, 3, H', W') in [0, 1], upscaled, text below."""
    if images.ndim == 5:
        images, scale = frame_strips(images), max(1, scale - 1)
    font = ImageFont.load_default()
    out = []
    for image, text in zip(images, texts):
        array = (image.clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * 255).astype(np.uint8)
        picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
        width_chars = max(8, picture.width // 6)
        wrapped = textwrap.wrap(text, width_chars)[:lines]
        canvas = Image.new("RGB", (picture.width, picture.height + 12 * lines + 4), "white")
        canvas.paste(picture, (0, 0))
        ImageDraw.Draw(canvas).multiline_text((2, picture.height + 2), "\n".join(wrapped), fill="black", font=font)
        out.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


# Predicted boxes in orange, true ones in green: the colours read apart on the demo's backgrounds.
PREDICTED, TRUE = (255, 128, 0), (0, 200, 0)


def draw_boxes(image: Image.Image, boxes: list[tuple[float, float, float, float]], labels: list[str],
               colour: tuple[int, int, int] = PREDICTED, scale: int = 1) -> Image.Image:
    """A copy of ``image``, upscaled ``scale`` times, with each box [x0, y0, x1, y1] (in the
    image's pixels) outlined and its label written at its top left corner."""
    picture = image.convert("RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        corners = [x0 * scale, y0 * scale, x1 * scale, y1 * scale]
        draw.rectangle(corners, outline=colour, width=max(1, scale // 2))
        left, top = corners[0], max(0, corners[1] - 11)
        draw.rectangle(draw.textbbox((left, top), label, font=font), fill=colour)
        draw.text((left, top), label, fill="black", font=font)
    return picture


def to_image(tensor: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> a PIL image."""
    return Image.fromarray((tensor.clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * 255).astype(np.uint8))


def to_tensor(image: Image.Image) -> Tensor:
    """A PIL image -> (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255


def true_and_predicted(image: Tensor, true_boxes: list, true_labels: list[str], predicted_boxes: list,
                       predicted_labels: list[str], scale: int = 4) -> Tensor:
    """A model input (3, H, W) in [0, 1], upscaled, with the true boxes (green) and the predicted
    ones (orange), each [x0, y0, x1, y1] in the input's pixels. Returns (3, scale H, scale W)."""
    picture = draw_boxes(to_image(image), true_boxes, true_labels, TRUE, scale=scale)
    picture = draw_boxes(picture, [[v * scale for v in box] for box in predicted_boxes], predicted_labels, PREDICTED)
    return to_tensor(picture)


def legible_boxes(image: Image.Image, boxes: list, labels: list[str]) -> Image.Image:
    """Boxes drawn on an image at its own size, or enlarged until its short side has 256 pixels
    or more, so that the labels of small images are legible."""
    return draw_boxes(image, boxes, labels, PREDICTED, scale=max(1, 256 // min(image.size)))
