"""Reader of object-detection annotations: COCO instances (``instances_val2017.json``) and LVIS v1
(``lvis_v1_val.json``), read as they are distributed.

Both hold ``images``, ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` as
``[x, y, w, h]`` pixels) and ``categories`` (``id``, ``name``). COCO marks regions of many
objects with ``iscrowd: 1``; their boxes are kept apart, as regions where a detection is
neither right nor wrong. LVIS adds what makes its 1 203 categories usable without annotating
every one of them in every image: per category a ``frequency`` ("r", "c", "f") and
``synonyms``; per image the categories verified absent (``neg_category_ids``) and those whose
instances were not all boxed (``not_exhaustive_category_ids``). LVIS images have no
``file_name``, only a ``coco_url`` such as ``http://images.cocodataset.org/val2017/000000397133.jpg``;
the image is looked for at ``image_root / "val2017" / "000000397133.jpg"``, the COCO folders that
LVIS reuses.

Image files are not opened here (too slow for a big dataset) but when a sample is loaded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mammut.data.errors import DataFormatError
from mammut.data.json_records import field, load_json, reject

Box = tuple[float, float, float, float]  # [x, y, w, h] in pixels
FREQUENCIES = ("r", "c", "f")  # LVIS: rare, common, frequent
FEDERATED_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")  # LVIS, per image
BOX_TOLERANCE = 1.0  # pixels a box may reach past its image's edge (rounding in COCO's own files)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    synonyms: tuple[str, ...] = ()
    frequency: str | None = None  # LVIS "r" | "c" | "f"; None in plain COCO


@dataclass(frozen=True)
class DetectionRecord:
    """One image and its objects, in annotation-id order."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: tuple[Box, ...]  # the objects (iscrowd 0)
    category_ids: tuple[int, ...]  # one per box
    crowd_boxes: tuple[Box, ...] = ()  # iscrowd 1 regions
    # LVIS: categories verified absent; None where the file has no such field (COCO: every
    # category is exhaustively annotated in every image).
    neg_category_ids: tuple[int, ...] | None = None
    not_exhaustive_category_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Instances:
    records: list[DetectionRecord]  # by image id; images without objects are kept: they are negatives
    categories: list[Category]  # by category id
    skipped: int  # annotations and images dropped as bad under skip_bad_samples
    file: Path


def read_instances(
    annotations_file: str | os.PathLike,
    image_root: str | os.PathLike,
    skip_bad_samples: bool = False,
) -> Instances:
    """Read a COCO instances or LVIS v1 file into records ordered by image id.

    A malformed file (invalid JSON, a missing key, a value of the wrong type, a duplicate
    image or category id, an annotation of an image or category not listed, a negative or
    not-exhaustive category id that is not a category) raises ``DataFormatError`` naming the
    file and the record. Some problems are per sample: a ``bbox`` that is not four finite
    numbers with a positive width and height, and an image with neither ``file_name`` nor a
    usable ``coco_url``. They raise too, unless ``skip_bad_samples``: then the annotation or
    the image (with its annotations) is dropped, logged as a warning and counted.

    A box must lie in its image: one that reaches more than ``BOX_TOLERANCE`` (1 pixel) past an
    edge is a bad sample like a malformed one (COCO's own files have boxes up to a pixel past the
    edge, from rounding; they are kept as they are, and the transforms clip them). Otherwise the
    box would be scored as an object nothing can find in validation, and dropped unnamed in training.

    A file with LVIS's federated fields (any image with ``neg_category_ids`` or
    ``not_exhaustive_category_ids``) must have both on every image and a ``frequency`` on every
    category: LVIS evaluation needs them, and a file missing one fails here, not at the first
    validation.
    """
    file, image_root = Path(annotations_file), Path(image_root)
    data = load_json(file)
    if not isinstance(data, dict):
        raise DataFormatError(f"{file}: expected a JSON object with 'images', 'annotations' and 'categories', "
                              f"got {type(data).__name__}")
    categories = _categories(field(data, "categories", list, file, "top level"), file)
    known = {category.id for category in categories}
    skipped = 0

    images: dict[int, DetectionRecord] = {}
    bad_images: set[int] = set()
    image_entries = field(data, "images", list, file, "top level")
    _check_federated_fields(image_entries, categories, file)
    for position, image in enumerate(image_entries):
        image_id = field(image, "id", int, file, f"images[{position}]")
        if image_id in images or image_id in bad_images:
            raise DataFormatError(f"{file}: images[{position}]: duplicate image id {image_id}")
        record, problem = _image(image, image_id, file, image_root, known)
        if problem:
            reject(f"{file}: image id {image_id}: {problem}", skip_bad_samples)
            skipped += 1
            bad_images.add(image_id)
            continue
        images[image_id] = record

    objects: dict[int, list[tuple[int, Box, int]]] = {image_id: [] for image_id in images}
    crowds: dict[int, list[tuple[int, Box]]] = {image_id: [] for image_id in images}
    for position, annotation in enumerate(field(data, "annotations", list, file, "top level")):
        annotation_id = field(annotation, "id", int, file, f"annotations[{position}]")
        where = f"annotations[{position}] (annotation id {annotation_id})"
        image_id = field(annotation, "image_id", int, file, where)
        category_id = field(annotation, "category_id", int, file, where)
        crowd = _optional(annotation, "iscrowd", int, file, where, 0)
        if image_id not in images and image_id not in bad_images:
            raise DataFormatError(f"{file}: {where}: refers to image id {image_id}, which is not in 'images'")
        if category_id not in known:
            raise DataFormatError(f"{file}: {where}: refers to category id {category_id}, which is not in 'categories'")
        if crowd not in (0, 1):
            raise DataFormatError(f"{file}: {where}: 'iscrowd' must be 0 or 1, got {crowd}")
        if "bbox" not in annotation:
            raise DataFormatError(f"{file}: {where}: missing key 'bbox'")
        if image_id in bad_images:
            continue  # dropped with its image, already counted
        box, problem = _box(annotation["bbox"], images[image_id].width, images[image_id].height)
        if problem:
            reject(f"{file}: annotation id {annotation_id} (image id {image_id}): {problem}", skip_bad_samples)
            skipped += 1
            continue
        if crowd:
            crowds[image_id].append((annotation_id, box))
        else:
            objects[image_id].append((annotation_id, box, category_id))

    records = []
    for image_id in sorted(images):
        found = sorted(objects[image_id], key=lambda item: item[0])  # stable: equal ids keep file order
        records.append(DetectionRecord(
            image_id=image_id,
            path=images[image_id].path,
            width=images[image_id].width,
            height=images[image_id].height,
            boxes=tuple(box for _, box, _ in found),
            category_ids=tuple(category_id for _, _, category_id in found),
            crowd_boxes=tuple(box for _, box in sorted(crowds[image_id], key=lambda item: item[0])),
            neg_category_ids=images[image_id].neg_category_ids,
            not_exhaustive_category_ids=images[image_id].not_exhaustive_category_ids,
        ))
    return Instances(records=records, categories=categories, skipped=skipped, file=file)


def _categories(entries: list, file: Path) -> list[Category]:
    by_id: dict[int, Category] = {}
    for position, entry in enumerate(entries):
        category_id = field(entry, "id", int, file, f"categories[{position}]")
        where = f"categories[{position}] (category id {category_id})"
        if category_id in by_id:
            raise DataFormatError(f"{file}: {where}: duplicate category id {category_id}")
        synonyms = _optional(entry, "synonyms", list, file, where, [])
        if not all(isinstance(synonym, str) for synonym in synonyms):
            raise DataFormatError(f"{file}: {where}: 'synonyms' must be a list of strings, got {synonyms!r}")
        frequency = _optional(entry, "frequency", str, file, where, None)
        if frequency is not None and frequency not in FREQUENCIES:
            raise DataFormatError(f"{file}: {where}: 'frequency' must be one of {FREQUENCIES}, got {frequency!r}")
        by_id[category_id] = Category(category_id, field(entry, "name", str, file, where), tuple(synonyms), frequency)
    return [by_id[category_id] for category_id in sorted(by_id)]


def _image(image: dict, image_id: int, file: Path, image_root: Path,
           known: set[int]) -> tuple[DetectionRecord | None, str | None]:
    """The image's record without its objects, or the per-sample problem that drops it."""
    where = f"image id {image_id}"
    width = field(image, "width", int, file, where)
    height = field(image, "height", int, file, where)
    negatives = _category_ids(image, "neg_category_ids", file, where, known)
    not_exhaustive = _category_ids(image, "not_exhaustive_category_ids", file, where, known)
    file_name = _optional(image, "file_name", str, file, where, None)
    url = _optional(image, "coco_url", str, file, where, None)
    if file_name is not None:
        path = image_root / file_name
    elif url is not None:
        # LVIS: ".../val2017/000000397133.jpg" is image_root/val2017/000000397133.jpg.
        parts = [part for part in urlparse(url).path.split("/") if part]
        if len(parts) < 2:
            return None, f"'coco_url' {url!r} does not end in a folder and a file name"
        path = image_root / parts[-2] / parts[-1]
    else:
        return None, "neither 'file_name' nor 'coco_url'"
    if width <= 0 or height <= 0:
        return None, f"width {width} and height {height} must be positive"
    record = DetectionRecord(image_id, path, width, height, (), (), (), negatives, not_exhaustive or ())
    return record, None


def _category_ids(image: dict, key: str, file: Path, where: str, known: set[int]) -> tuple[int, ...] | None:
    """``image[key]``, sorted, each a listed category; None if the key is absent."""
    ids = _optional(image, key, list, file, where, None)
    if ids is None:
        return None
    for category_id in ids:
        if not isinstance(category_id, int) or isinstance(category_id, bool):
            raise DataFormatError(f"{file}: {where}: {key!r} must hold category ids, got {category_id!r}")
        if category_id not in known:
            raise DataFormatError(f"{file}: {where}: {key!r} names category id {category_id}, "
                                  "which is not in 'categories'")
    return tuple(sorted(set(ids)))


def _check_federated_fields(images: list, categories: list[Category], file: Path) -> None:
    """A file with LVIS's federated fields has them on every image, and every category's frequency."""
    federated = next((image for image in images if isinstance(image, dict)
                      and any(key in image for key in FEDERATED_FIELDS)), None)
    if federated is None:
        return
    for position, image in enumerate(images):
        missing = [key for key in FEDERATED_FIELDS if isinstance(image, dict) and key not in image]
        if missing:
            raise DataFormatError(
                f"{file}: images[{position}] (image id {image.get('id')}): no {' and no '.join(map(repr, missing))}, "
                f"though image id {federated.get('id')} has LVIS's federated fields: LVIS evaluation needs both "
                "on every image (an empty list where nothing was checked)")
    unrated = [category.id for category in categories if category.frequency is None]
    if unrated:
        raise DataFormatError(f"{file}: category id {unrated[0]} has no 'frequency' (\"r\", \"c\" or \"f\"), though "
                              "the images have LVIS's federated fields: LVIS evaluation needs every category's")


def _box(value: Any, width: int, height: int) -> tuple[Box | None, str | None]:
    """A ``bbox`` as four floats, or the problem with it (the image is ``width`` x ``height``)."""
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or len(value) != 4 or not all(math.isfinite(v) for v in value):
        return None, f"bbox must be 4 finite numbers [x, y, w, h], got {value!r}"
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        return None, f"bbox {value!r} has a width or height that is not positive"
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return None, (f"bbox {value!r} reaches outside its {width}x{height} image by more than "
                      f"{BOX_TOLERANCE:g} pixel")
    return (x, y, w, h), None


def _optional(record: dict, key: str, kind: type, file: Path, where: str, default: Any) -> Any:
    """``record[key]`` checked like ``field``, or ``default`` where the format allows it absent."""
    return field(record, key, kind, file, where) if key in record else default
