"""Writers of real test inputs: JPEG files and COCO-captions JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

# Five captions per image, as in COCO and the demo world.
CAPTIONS = {
    3: ["A large red circle.", "a red circle, large", "one big red circle", "the circle is red", "red circle"],
    1: ["a small blue square", "a blue square", "one small blue square", "small square in blue", "blue square"],
    2: ["a green triangle left of a star", "two shapes", "a star and a triangle", "green triangle", "a yellow star"],
}


def write_jpeg(path: Path, colour=(200, 30, 30), size=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG")
    return path


def coco_captions(captions_by_image: dict[int, list[str]]) -> dict:
    """A COCO captions document; annotation ids run in reverse caption order per image,
    so a reader that keeps file order instead of sorting by id gets them backwards."""
    images, annotations = [], []
    next_id = 1000
    for image_id, captions in captions_by_image.items():
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 24, "height": 24})
        for position, caption in enumerate(captions):
            annotations.append({"id": next_id - position, "image_id": image_id, "caption": caption})
        next_id += 100
    return {"info": {"description": "test"}, "images": images, "annotations": annotations}


def write_coco(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    return path


def write_dataset(root: Path, captions_by_image: dict[int, list[str]] = CAPTIONS) -> Path:
    """Images under root/images and root/captions.json; returns the JSON path."""
    for image_id in captions_by_image:
        write_jpeg(root / "images" / f"{image_id:012d}.jpg", colour=(20 * image_id, 100, 200))
    return write_coco(root / "captions.json", coco_captions(captions_by_image))
