"""Drawing a scene with PIL and numpy: a low-contrast background, then antialiased shapes.

All randomness here is appearance only (background texture, slight colour jitter)
and comes from the per-image numpy Generator the caller passes in, so an image
looks the same whichever process draws it.
"""

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .scene import Scene, SceneObject
from .world import COLOURS

SUPERSAMPLE = 4  # sub-pixels per pixel side when filling polygons; smooth edges
COLOUR_JITTER = 10  # per channel; small next to the distance between colours

# Background levels stay dark-to-mid grey with a faint tint, so every colour,
# white included, stands out clearly.
BACKGROUND_GREY = (45.0, 115.0)
BACKGROUND_TINT = 12.0
GRADIENT_SPAN = 30.0
NOISE_COARSE_STD = 10.0
NOISE_COARSE_CELLS = 4
NOISE_FINE_STD = 4.0
GRADIENT_FINE_STD = 1.5  # a trace of grain keeps gradients from banding after JPEG


@lru_cache(maxsize=4)
def _centred_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to the image centre, (y, x), each (size, size)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5 - size / 2
    return ys, xs


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(*BACKGROUND_GREY) + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, 3)
    if kind == "gradient":
        other = base + rng.uniform(-GRADIENT_SPAN, GRADIENT_SPAN, 3)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = _centred_grid(size)
        # Position along the gradient direction, 0 at one corner and 1 at the other.
        t = (xs * np.cos(angle) + ys * np.sin(angle)) / (size * np.sqrt(2)) + 0.5
        image = base + t[..., None] * (other - base)
        return image + GRADIENT_FINE_STD * rng.standard_normal((size, size, 3), dtype=np.float32)
    if kind == "noise":
        coarse = rng.normal(0, NOISE_COARSE_STD, (NOISE_COARSE_CELLS, NOISE_COARSE_CELLS)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BILINEAR))
        return base + smooth[..., None] + NOISE_FINE_STD * rng.standard_normal((size, size, 3), dtype=np.float32)
    raise ValueError(f"unknown background kind {kind!r}")


def _coverage(obj: SceneObject, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Fraction of each pixel in the window [x0, x0+width) x [y0, y0+height) that the shape covers."""
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    # Pixel i spans [i, i+1) in scene coordinates; PIL fills sub-pixels by their centres.
    vertices = [((x - x0) * SUPERSAMPLE - 0.5, (y - y0) * SUPERSAMPLE - 0.5) for x, y in obj.polygon]
    ImageDraw.Draw(mask).polygon(vertices, fill=255)
    return np.asarray(mask.resize((width, height), Image.BOX), dtype=np.float32) / 255.0


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` as an RGB image of side `scene.image_size`."""
    size = scene.image_size
    canvas = _background(scene.background, size, rng)
    for obj in scene.objects:
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float64)
        colour = colour + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
        # Only the window around the object is drawn; the rest of the image is untouched.
        bx0, by0, bx1, by1 = obj.box
        x0, y0 = max(0, int(bx0)), max(0, int(by0))
        x1, y1 = min(size, int(np.ceil(bx1)) + 1), min(size, int(np.ceil(by1)) + 1)
        alpha = _coverage(obj, x0, y0, x1 - x0, y1 - y0)[..., None]
        window = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = window * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
