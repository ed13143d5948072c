"""Reader of the Karpathy splits (``dataset_coco.json``, ``dataset_flickr30k.json``).

The retrieval results of most papers (COCO 5k test, Flickr30k 1k test) use these files:
one list ``images``, each image with ``filename``, an optional ``filepath`` (COCO's
``train2014``/``val2014``), ``imgid``, COCO's ``cocoid``, its ``split`` and its ``sentences``
(``raw`` is the caption). Image files are not opened here but when a sample is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mammut.data.coco import CaptionRecord
from mammut.data.errors import DataFormatError
from mammut.data.json_records import field, load_json, reject

# "restval" (the COCO val2014 images outside Karpathy's val and test) is part of the standard training set.
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
_FILE_SPLITS = ("train", "restval", "val", "test")


def read_karpathy_captions(
    file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    skip_bad_samples: bool = False,
) -> tuple[list[CaptionRecord], int]:
    """Read one split of a Karpathy-format file into records ordered by image id.

    ``split`` is "train" (the file's "train" and "restval" images), "val" or "test". Each
    image is found at ``image_root / filepath / filename``; its id is ``cocoid`` where present,
    else ``imgid``. Captions are the sentences' ``raw`` text, stripped, in file order.

    A malformed file (invalid JSON, a missing key, a value of the wrong type, a duplicate
    image id, an unknown split) raises ``DataFormatError`` naming the file and the record;
    every image is checked, not only those of ``split``. Two problems are per sample: an
    empty caption and an image with no captions. They raise too, unless ``skip_bad_samples``:
    then the caption or image is dropped, logged as a warning and counted.

    Returns:
        The records and the number skipped (dropped captions plus dropped images).
    """
    file = Path(file)
    return karpathy_caption_records(load_json(file), file, image_root, split, skip_bad_samples)


def karpathy_caption_records(
    data: Any, file: Path, image_root: str | os.PathLike, split: str, skip_bad_samples: bool = False
) -> tuple[list[CaptionRecord], int]:
    """``read_karpathy_captions`` of a document already loaded from ``file``."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"split must be one of {', '.join(KARPATHY_SPLITS)}; got {split!r}")
    image_root = Path(image_root)
    if not isinstance(data, dict):
        raise DataFormatError(f"{file}: expected a JSON object with 'images', got {type(data).__name__}")
    images = field(data, "images", list, file, "top level")

    seen: set[int] = set()
    records, skipped = [], 0
    for position, image in enumerate(images):
        imgid = field(image, "imgid", int, file, f"images[{position}]")
        image_id = field(image, "cocoid", int, file, f"images[{position}]") if "cocoid" in image else imgid
        where = f"images[{position}] (image id {image_id})"
        if image_id in seen:
            raise DataFormatError(f"{file}: {where}: duplicate image id {image_id}")
        seen.add(image_id)
        filename = field(image, "filename", str, file, where)
        filepath = field(image, "filepath", str, file, where) if "filepath" in image else ""
        image_split = field(image, "split", str, file, where)
        if image_split not in _FILE_SPLITS:
            raise DataFormatError(f"{file}: {where}: unknown split {image_split!r}, expected one of {_FILE_SPLITS}")
        sentences = field(image, "sentences", list, file, where)
        raws = [field(sentence, "raw", str, file, f"{where} sentences[{i}]") for i, sentence in enumerate(sentences)]
        if image_split not in KARPATHY_SPLITS[split]:
            continue

        captions = []
        for i, raw in enumerate(raws):
            if not raw.strip():
                reject(f"{file}: {where} sentences[{i}]: empty caption {raw!r}", skip_bad_samples)
                skipped += 1
                continue
            captions.append(raw.strip())
        if not captions:
            reject(f"{file}: {where} ({filename}): no captions", skip_bad_samples)
            skipped += 1
            continue
        path = image_root / filepath / filename
        records.append(CaptionRecord(image_id=image_id, path=path, captions=tuple(captions)))
    records.sort(key=lambda record: record.image_id)
    return records, skipped
