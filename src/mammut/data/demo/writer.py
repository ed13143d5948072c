"""Writing files so that the same inputs always give byte-identical outputs.

JSON is written compactly with a fixed key order and no timestamps (``json_records.write_json``); JPEGs with
fixed encoder settings. JSON files are written to a temporary name and renamed, so
an interrupted run never leaves a truncated JSON file that looks complete.
"""

import io
from pathlib import Path

from PIL import Image


GENERATOR_VERSION = "1.0.0"

JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4; chroma subsampling would smear colours on 10-px shapes


def info(split: str, seed: int, image_size: int, description: str) -> dict:
    """The COCO `info` block, recording what produced the file."""
    return {
        "description": description,
        "version": GENERATOR_VERSION,
        "generator": "mammut.data.demo",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "split": split,
        "image_size": image_size,
    }


def write_jpeg(path: Path, image: Image.Image) -> None:
    # Images are many and small: encode in memory and write once. A run counts as
    # complete only when its manifest is written, which happens last.
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    path.write_bytes(encoded.getvalue())
