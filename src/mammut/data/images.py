"""Image decoding that turns every way a file can be broken into a ``BadSampleError``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mammut.data.errors import BadSampleError

# Everything PIL raises for unreadable, truncated or non-image data. UnidentifiedImageError
# and "image file is truncated" are OSErrors; some corrupt headers raise the others.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

WHITE = (255, 255, 255)


def load_rgb_image(path: str | os.PathLike, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Open, fully decode and convert an image file to 8-bit RGB (``decode_rgb_image``)."""
    return decode_rgb_image(Path(path), background=background)


def decode_rgb_image(source: Path | bytes, name: str | None = None,
                     background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Fully decode and convert an image, a file or the bytes of one (a tar member, named ``name``
    in messages), to 8-bit RGB.

    ``Image.open`` only reads the header, so the pixels are decoded here (``load``) to
    surface a corrupt or truncated file now, inside the sample that owns it, not later in
    a transform. EXIF orientation is not applied, as in the COCO annotations.

    The conversion is ``as_rgb``'s.
    """
    path = Path(name) if name is not None else source if isinstance(source, Path) else Path("<image bytes>")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            return as_rgb(image, path, background)
    except FileNotFoundError as error:
        raise BadSampleError(f"{path}: image file not found") from error
    except _DECODE_ERRORS as error:
        raise BadSampleError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error


def as_rgb(image: Image.Image, path: Path = Path("<image>"), background: tuple[int, int, int] = WHITE) -> Image.Image:
    """A decoded image as 8-bit RGB (``path`` names it in messages).

    PIL's own conversion clips wider pixels to 8 bits, which turns a 16-bit image white, and
    drops alpha, which shows whatever colour transparent pixels store. Instead, greyscale of
    16 or 32 bits per pixel (modes "I;16", "I") is scaled from the 16-bit range (value / 257),
    float greyscale ("F") from [0, 1]; values outside those ranges are an error. Transparent
    images (an alpha band, or a "transparency" colour or palette entry) are composited onto
    ``background``, white by default as web browsers show them.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8_bits(image, path)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _to_8_bits(image: Image.Image, path: Path) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image as "L" (or "LA" with its transparent value)."""
    values = np.asarray(image).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        if not (np.isfinite(values).all() and 0.0 <= low and high <= 1.0):
            raise BadSampleError(f"{path}: float pixels range from {low} to {high}; only [0, 1] has a known scale")
        scaled = values * 255.0
    else:
        # PIL opens 16-bit PNG and TIFF greyscale as "I;16" or as 32-bit "I" (by version and file).
        if not (0 <= low and high <= 65535):
            raise BadSampleError(f"{path}: {image.mode} pixels range from {low:.0f} to {high:.0f}; "
                                 "only 16-bit values (0 to 65535) have a known scale")
        scaled = values / 257.0  # 65535 -> 255
    grey = Image.fromarray(np.rint(scaled).astype(np.uint8))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and image.mode != "F":
        # A 16-bit PNG's tRNS chunk names one grey value as transparent.
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey
