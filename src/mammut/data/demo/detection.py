"""COCO instances with LVIS-style categories: one category per shape name.

Novel shapes (hexagon, cross) are marked "frequency": "r" and their boxes are left
out of the training split only; they are still drawn there, so a detector that
is told nothing about them sees them as background, while captions still name
them. Val and test annotate every object.
"""

from .geometry import polygon_area
from .scene import Scene, SceneObject
from .world import NOVEL_SHAPES, SHAPES

CATEGORY_IDS = {shape: index + 1 for index, shape in enumerate(SHAPES)}
DECIMALS = 2  # sub-pixel precision is enough and keeps the JSON short


def categories() -> list[dict]:
    """LVIS-style categories; "f" (frequent) for base shapes, "r" (rare) for novel ones."""
    return [
        {
            "id": CATEGORY_IDS[shape],
            "name": shape,
            "supercategory": "shape",
            "synonyms": [shape],
            "frequency": "r" if shape in NOVEL_SHAPES else "f",
        }
        for shape in SHAPES
    ]


def annotated_shapes(split: str) -> tuple[str, ...]:
    """Shapes whose boxes this split carries."""
    return tuple(s for s in SHAPES if s not in NOVEL_SHAPES) if split == "train" else SHAPES


def _annotation(obj: SceneObject, annotation_id: int, image_id: int) -> dict:
    x0, y0, x1, y1 = obj.box
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": CATEGORY_IDS[obj.shape],
        "bbox": [round(x0, DECIMALS), round(y0, DECIMALS), round(x1 - x0, DECIMALS), round(y1 - y0, DECIMALS)],
        "area": round(polygon_area(obj.polygon), DECIMALS),
        "segmentation": [[round(v, DECIMALS) for point in obj.polygon for v in point]],
        "iscrowd": 0,
        # Not COCO fields; kept so visualisations and tests can check what was drawn.
        "colour": obj.colour,
        "size": obj.size,
    }


def image_instances(scene: Scene, image_id: int, split: str) -> tuple[list[dict], list[int]]:
    """The image's annotations (ids image_id*10 + k) and its LVIS `neg_category_ids`.

    Negative categories are those known to be absent: annotated in this split and
    not in the image. Novel shapes in train are unannotated, so never negatives.
    """
    annotated = annotated_shapes(split)
    objects = [o for o in scene.objects if o.shape in annotated]
    annotations = [_annotation(o, image_id * 10 + k, image_id) for k, o in enumerate(objects)]
    present = {o.shape for o in scene.objects}
    negatives = [CATEGORY_IDS[s] for s in annotated if s not in present]
    return annotations, negatives
