"""The vocabulary of the demo world: shapes, colours, sizes and their proportions.

Everything that names or measures a thing in the world lives here, so the scene
sampler, the renderer and every annotation writer agree on it.
"""

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")

# Held out from detection training; an open-vocabulary detector has to learn them
# from captions alone.
NOVEL_SHAPES = ("hexagon", "cross")

# Saturated colours, far apart from each other and from the dark, low-contrast
# backgrounds, so a tiny model can tell them apart at 64x64 after JPEG.
COLOURS = {
    "red": (220, 30, 35),
    "green": (40, 185, 50),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (155, 55, 210),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}

SIZES = ("small", "large")

# Object extent (side of its bounding square) as a fraction of the image side.
# At 64 px: small is 10-14 px, large 21-27 px, so the two never look alike.
EXTENT_FRACTION = {"small": (0.16, 0.22), "large": (0.33, 0.42)}

# Empty space kept between objects and around the image border, as a fraction of
# the image side (2 px and 1 px at 64 px).
GAP_FRACTION = 1 / 32
BORDER_FRACTION = 1 / 64

# How many objects a scene has, and how often. Single objects are few because only
# 84 distinct ones exist; caption uniqueness rejects repeats anyway.
OBJECT_COUNT_WEIGHTS = {1: 0.2, 2: 0.4, 3: 0.4}

BACKGROUND_KINDS = ("noise", "gradient")

SPLITS = ("train", "val", "test")


def plural(shape: str) -> str:
    """English plural of a shape name ("cross" -> "crosses")."""
    return shape + "es" if shape.endswith("s") else shape + "s"
