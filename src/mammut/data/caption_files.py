"""One entry point for caption files of either format: COCO captions or the Karpathy splits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mammut.data.coco import CaptionRecord, coco_caption_records
from mammut.data.json_records import load_json
from mammut.data.karpathy import karpathy_caption_records

CAPTION_FORMATS = ("auto", "coco", "karpathy")


def caption_format(data: Any) -> str:
    """The format of a loaded caption file: "karpathy" for images that carry their own sentences
    and no ``annotations``, else "coco" (whose reader then names whatever is missing)."""
    if isinstance(data, dict) and "annotations" not in data and isinstance(data.get("images"), list):
        if any(isinstance(image, dict) and "sentences" in image for image in data["images"]):
            return "karpathy"
    return "coco"


def read_captions(
    file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    skip_bad_samples: bool = False,
    format: str = "auto",
) -> tuple[list[CaptionRecord], int]:
    """The records of ``split`` ("train", "val" or "test") in a caption file, and the number skipped.

    ``format`` is "coco" (one file per split, so ``split`` is not used), "karpathy" (one file
    holds every split) or "auto", which tells them apart by their content. See
    ``read_coco_captions`` and ``read_karpathy_captions`` for what each checks.
    """
    if format not in CAPTION_FORMATS:
        raise ValueError(f"caption file format must be one of {', '.join(CAPTION_FORMATS)}; got {format!r}")
    file = Path(file)
    data = load_json(file)  # once for both the detection and the reader: Karpathy's COCO file is over 100 MB
    if format == "auto":
        format = caption_format(data)
    if format == "karpathy":
        return karpathy_caption_records(data, file, image_root, split, skip_bad_samples)
    return coco_caption_records(data, file, image_root, skip_bad_samples)
