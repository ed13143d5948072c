"""Building one split: unique scenes with five unused captions each.

Uniqueness rules, checked as scenes are drawn (a scene that breaks one is redrawn):
- no caption string appears twice in a split;
- in val and test, no two images have the same objects (size, colour, shape), which
  implies distinct canonical descriptions and makes each caption, which names every
  object in full there, match exactly one image: retrieval has one right answer.
"""

import random
from dataclasses import dataclass

from .captions import canonical_description, draw_caption, object_inventory
from .scene import Scene, sample_scene
from .world import SPLITS

CAPTIONS_PER_IMAGE = 5
CAPTION_DRAWS = 40  # phrasings tried per scene before the scene is given up

# Image ids are disjoint across splits so mixed batches never confuse images.
SPLIT_ID_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}
MAX_SPLIT_SIZE = 10_000_000 - 1

# Val and test can hold only so many distinct scenes; fail clearly instead of spinning.
MAX_CONSECUTIVE_REJECTIONS = 20_000


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    index: int  # position within the split; seeds the image's appearance
    scene: Scene
    captions: tuple[str, ...]
    canonical: str

    @property
    def file_name(self) -> str:
        return f"{self.image_id:012d}.jpg"


def split_rng(seed: int, split: str, stream: str) -> random.Random:
    """An independent random stream per (seed, split, purpose); string seeds hash stably."""
    return random.Random(f"mammut-demo:{seed}:{split}:{stream}")


def _fresh_captions(scene: Scene, rng: random.Random, complete: bool, used: set[str]) -> list[str] | None:
    chosen: list[str] = []
    for _ in range(CAPTION_DRAWS):
        caption = draw_caption(scene, rng, complete)
        if caption not in used and caption not in chosen:
            chosen.append(caption)
            if len(chosen) == CAPTIONS_PER_IMAGE:
                return chosen
    return None


def build_split(split: str, size: int, seed: int, image_size: int) -> list[ImageRecord]:
    """Draw `size` scenes for `split` with their captions, deterministically for `seed`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= size <= MAX_SPLIT_SIZE:
        raise ValueError(f"split {split!r}: size {size} must be between 0 and {MAX_SPLIT_SIZE}")
    rng = split_rng(seed, split, "scenes")
    evaluation = split != "train"
    used_captions: set[str] = set()
    used_inventories: set[str] = set()
    records: list[ImageRecord] = []
    rejections = 0
    while len(records) < size:
        scene = sample_scene(rng, image_size)
        inventory = object_inventory(scene)
        captions = None
        if not (evaluation and inventory in used_inventories):
            captions = _fresh_captions(scene, rng, complete=evaluation, used=used_captions)
        if captions is None:
            rejections += 1
            if rejections > MAX_CONSECUTIVE_REJECTIONS:
                raise RuntimeError(
                    f"split {split!r}: found only {len(records)} of {size} unique scenes; ask for fewer images"
                )
            continue
        rejections = 0
        used_captions.update(captions)
        used_inventories.add(inventory)
        index = len(records)
        image_id = SPLIT_ID_OFFSET[split] + index + 1
        records.append(ImageRecord(image_id, index, scene, tuple(captions), canonical_description(scene)))
    return records
