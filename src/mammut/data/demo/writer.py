"""Writing files so that the same inputs always give byte-identical outputs.

JSON is written compactly with a fixed key order and no timestamps; JPEGs with
fixed encoder settings. JSON files are written to a temporary name and renamed, so
an interrupted run never leaves a truncated JSON file that looks complete.
"""

import io
import json
import os
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


def _replace_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json(path: Path, content: dict) -> None:
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    _replace_atomically(path, text.encode("utf-8"))


def write_jpeg(path: Path, image: Image.Image) -> None:
    # Images are many and small: encode in memory and write once. A run counts as
    # complete only when its manifest is written, which happens last.
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    path.write_bytes(encoded.getvalue())
