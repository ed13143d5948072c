"""Sampling scenes: 1 to 3 non-overlapping objects and a background kind.

A scene holds only what the annotations talk about (shape, colour, size, where,
which background). Pixel-level randomness such as noise and colour jitter belongs
to the renderer, so captions and questions never depend on it.
"""

import random
from dataclasses import dataclass
from functools import cached_property

from .geometry import Point, boxes_apart, polygon_box, shape_polygon
from .world import (
    BACKGROUND_KINDS,
    BORDER_FRACTION,
    COLOURS,
    EXTENT_FRACTION,
    GAP_FRACTION,
    OBJECT_COUNT_WEIGHTS,
    SHAPES,
    SIZES,
)

RELATIONS = ("left of", "right of", "above", "below")

# A pair's relation is named after its dominant axis. Pairs close to a diagonal are
# resampled, so "left of" never has to be guessed from a 1-pixel difference.
DOMINANT_AXIS_RATIO = 1.25

PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    extent: float

    @cached_property
    def polygon(self) -> list[Point]:
        return shape_polygon(self.shape, self.cx, self.cy, self.extent)

    @cached_property
    def box(self) -> tuple[float, float, float, float]:
        """Tight (x0, y0, x1, y1) box of the drawn polygon."""
        return polygon_box(self.polygon)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def attributes(self) -> tuple[str, str, str]:
        return self.size, self.colour, self.shape


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    image_size: int


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b` along the dominant axis of their box centres."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"  # image y grows downwards


def region(obj: SceneObject, image_size: int) -> tuple[str, str]:
    """(vertical, horizontal) third of the image holding the object's centre."""
    cx, cy = obj.centre
    row = min(2, int(3 * cy / image_size))
    column = min(2, int(3 * cx / image_size))
    return ("top", "middle", "bottom")[row], ("left", "center", "right")[column]


def _clear_axis(a: tuple[float, float], b: tuple[float, float]) -> bool:
    dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
    return max(dx, dy) >= DOMINANT_AXIS_RATIO * min(dx, dy)


def _place(
    rng: random.Random, shape: str, colour: str, size: str, image_size: int, placed: list[SceneObject]
) -> SceneObject | None:
    lo, hi = EXTENT_FRACTION[size]
    extent = rng.uniform(lo, hi) * image_size
    # The tight box relative to the centre depends on the shape (a hexagon is wider
    # than tall), so measure it once at the origin.
    x0, y0, x1, y1 = polygon_box(shape_polygon(shape, 0.0, 0.0, extent))
    border = BORDER_FRACTION * image_size
    gap = GAP_FRACTION * image_size
    for _ in range(PLACEMENT_TRIES):
        cx = rng.uniform(border - x0, image_size - border - x1)
        cy = rng.uniform(border - y0, image_size - border - y1)
        candidate = SceneObject(shape, colour, size, cx, cy, extent)
        if all(
            boxes_apart(candidate.box, other.box, gap) and _clear_axis(candidate.centre, other.centre)
            for other in placed
        ):
            return candidate
    return None


def sample_scene(rng: random.Random, image_size: int) -> Scene:
    """Draw a scene with 1-3 objects whose boxes are apart and whose relations are clear."""
    counts = list(OBJECT_COUNT_WEIGHTS)
    weights = list(OBJECT_COUNT_WEIGHTS.values())
    colours = list(COLOURS)
    while True:
        count = rng.choices(counts, weights)[0]
        placed: list[SceneObject] = []
        for _ in range(count):
            obj = _place(rng, rng.choice(SHAPES), rng.choice(colours), rng.choice(SIZES), image_size, placed)
            if obj is None:
                break  # crowded: start the scene over rather than bias the layout
            placed.append(obj)
        if len(placed) == count:
            return Scene(tuple(placed), rng.choice(BACKGROUND_KINDS), image_size)


def single_object_scene(rng: random.Random, shape: str, colour: str, size: str, image_size: int) -> Scene:
    """One given object at a random place on a random background (the classification split)."""
    obj = _place(rng, shape, colour, size, image_size, [])  # alone, it fits at the first try
    return Scene((obj,), rng.choice(BACKGROUND_KINDS), image_size)
