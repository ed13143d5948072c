"""Reader of the COCO captions format (``captions_train2017.json`` and the like).

The file holds ``images`` (``id``, ``file_name``) and ``annotations`` (``id``,
``image_id``, ``caption``). The reader turns it into one ``CaptionRecord`` per image,
checking every record it uses; image files are not opened here (too slow for a big
dataset) but when a sample is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammut.data.errors import DataFormatError
from mammut.data.json_records import field, load_json, reject


@dataclass(frozen=True)
class CaptionRecord:
    """One image and all its captions, in annotation-id order."""

    image_id: int
    path: Path
    captions: tuple[str, ...]


def read_coco_captions(
    annotations_file: str | os.PathLike,
    image_root: str | os.PathLike,
    skip_bad_samples: bool = False,
) -> tuple[list[CaptionRecord], int]:
    """Read a COCO captions file into records ordered by image id.

    Each image is found at ``image_root / file_name``. Captions are stripped of
    surrounding whitespace.

    A malformed file (invalid JSON, a missing key, a value of the wrong type, a duplicate
    image id, an annotation of an image not listed) raises ``DataFormatError`` naming the
    file and the record. Two problems are per sample: an empty or whitespace-only caption
    and an image with no captions. They raise too, unless ``skip_bad_samples``: then the
    caption or image is dropped, logged as a warning and counted.

    Returns:
        The records and the number skipped (dropped captions plus dropped images).
    """
    file = Path(annotations_file)
    return coco_caption_records(load_json(file), file, image_root, skip_bad_samples)


def coco_caption_records(
    data: Any, file: Path, image_root: str | os.PathLike, skip_bad_samples: bool = False
) -> tuple[list[CaptionRecord], int]:
    """``read_coco_captions`` of a document already loaded from ``file``."""
    image_root = Path(image_root)
    if not isinstance(data, dict):
        raise DataFormatError(f"{file}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}")
    images = field(data, "images", list, file, "top level")
    annotations = field(data, "annotations", list, file, "top level")

    paths: dict[int, Path] = {}
    for position, image in enumerate(images):
        where = f"images[{position}]"
        image_id = field(image, "id", int, file, where)
        file_name = field(image, "file_name", str, file, f"{where} (image id {image_id})")
        if image_id in paths:
            raise DataFormatError(f"{file}: {where}: duplicate image id {image_id}")
        paths[image_id] = image_root / file_name

    skipped = 0
    captions: dict[int, list[tuple[int, str]]] = {image_id: [] for image_id in paths}
    for position, annotation in enumerate(annotations):
        annotation_id = field(annotation, "id", int, file, f"annotations[{position}]")
        where = f"annotations[{position}] (annotation id {annotation_id})"
        image_id = field(annotation, "image_id", int, file, where)
        caption = field(annotation, "caption", str, file, where)
        if image_id not in captions:
            raise DataFormatError(f"{file}: {where}: refers to image id {image_id}, which is not in 'images'")
        if not caption.strip():
            problem = f"{file}: annotation id {annotation_id} (image id {image_id}): empty caption {caption!r}"
            reject(problem, skip_bad_samples)
            skipped += 1
            continue
        captions[image_id].append((annotation_id, caption.strip()))

    records = []
    for image_id in sorted(paths):
        texts = tuple(text for _, text in sorted(captions[image_id]))
        if not texts:
            reject(f"{file}: image id {image_id} ({paths[image_id].name}): no captions", skip_bad_samples)
            skipped += 1
            continue
        records.append(CaptionRecord(image_id=image_id, path=paths[image_id], captions=texts))
    return records, skipped
