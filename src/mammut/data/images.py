"""Image decoding that turns every way a file can be broken into a ``BadSampleError``."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from mammut.data.errors import BadSampleError

# Everything PIL raises for unreadable, truncated or non-image data. UnidentifiedImageError
# and "image file is truncated" are OSErrors; some corrupt headers raise the others.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert an image to RGB.

    ``Image.open`` only reads the header, so the pixels are decoded here (``load``) to
    surface a corrupt or truncated file now, inside the sample that owns it, not later in
    a transform. EXIF orientation is not applied, as in the COCO annotations.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise BadSampleError(f"{path}: image file not found") from error
    except _DECODE_ERRORS as error:
        raise BadSampleError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error
