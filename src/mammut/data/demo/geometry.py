"""Outlines of the shapes as polygons, with their tight boxes and areas.

One polygon per object serves three uses: the renderer fills it, the scene sampler
keeps the boxes apart, and the detection writer stores its box and segmentation.
Because all three read the same vertices, a box always matches what was drawn.
"""

import math

Point = tuple[float, float]

CIRCLE_VERTICES = 32  # enough that the filled polygon is round at 64 px
STAR_INNER_RATIO = 0.45
CROSS_ARM_RATIO = 1 / 3  # arm thickness over extent


def _regular(cx: float, cy: float, radius: float, count: int, start_deg: float) -> list[Point]:
    step = 2 * math.pi / count
    start = math.radians(start_deg)
    return [
        (cx + radius * math.cos(start + k * step), cy + radius * math.sin(start + k * step))
        for k in range(count)
    ]


def shape_polygon(shape: str, cx: float, cy: float, extent: float) -> list[Point]:
    """Vertices (x, y) of `shape` centred at (cx, cy) inside a square of side `extent`."""
    r = extent / 2
    if shape == "circle":
        return _regular(cx, cy, r, CIRCLE_VERTICES, 0.0)
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":
        outer = _regular(cx, cy, r, 5, -90.0)
        inner = _regular(cx, cy, r * STAR_INNER_RATIO, 5, -90.0 + 36.0)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "hexagon":
        return _regular(cx, cy, r, 6, 0.0)
    if shape == "cross":
        a = r * CROSS_ARM_RATIO
        return [
            (cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a),
            (cx + r, cy + a), (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r),
            (cx - a, cy + a), (cx - r, cy + a), (cx - r, cy - a), (cx - a, cy - a),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def polygon_box(polygon: list[Point]) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) around the polygon."""
    xs = [x for x, _ in polygon]
    ys = [y for _, y in polygon]
    return min(xs), min(ys), max(xs), max(ys)


def polygon_area(polygon: list[Point]) -> float:
    """Area by the shoelace formula."""
    twice = 0.0
    for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1]):
        twice += x0 * y1 - x1 * y0
    return abs(twice) / 2


def boxes_apart(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float) -> bool:
    """True when boxes `a` and `b` are separated by at least `gap` on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
