"""Open-vocabulary detection metrics: COCO box AP, LVIS federated AP, and a class-prior baseline.

COCO AP is pycocotools' ``COCOeval(gt, dt, "bbox")`` itself, so the numbers are the ones papers
report: 10 IoU thresholds 0.50:0.95, 101 recall points, at most 100 detections per image and
category, crowd regions (``iscrowd`` 1) neither missed when undetected nor false positives when
detected. Only the images that were evaluated are scored, so a partial evaluation (a few validation
batches) is not counted as missing every other image's objects.

LVIS AP (``lvis_evaluation``) follows LVIS v1's federated rules; see ``mammut.metrics.lvis_eval``.

Both report -1 for an average over nothing, as their references do: AP_novel when no novel object
is among the evaluated images, APl when no box is large. Ground truth is a COCO/LVIS instances
document, given as a dict or as a path; a path is read once and kept while its file is unchanged,
since validation evaluates it again and again.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mammut.metrics.lvis_eval import lvis_box_ap

GroundTruth = str | os.PathLike | Mapping
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def coco_evaluation(ground_truth: GroundTruth, results: Sequence[Mapping], image_ids: Sequence[int] | None = None,
                    novel_category_ids: Sequence[int] = ()) -> dict[str, float]:
    """COCO box AP of ``results`` (COCO results: image_id, category_id, bbox [x, y, w, h], score).

    Returns "AP" (IoU 0.50:0.95), "AP50", "AP75"; with ``novel_category_ids``, "AP_novel" and
    "AP_base" over the novel and the other categories (what COCOeval gives with ``params.catIds``
    set to them); and "AP/{category name}" for each category with boxes among the evaluated images.
    ``image_ids`` limits the evaluation to those images (default: all); detections elsewhere are
    left out. No detections at all score 0.
    """
    dataset = _dataset(ground_truth)
    results = _checked_results(dataset, results)
    evaluated = _evaluated_images(dataset, image_ids)
    novel = _known_categories(dataset, novel_category_ids)
    coco_gt = _coco(ground_truth, dataset)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
        # loadRes cannot take an empty list; an empty result set scores the same through COCOeval.
        coco_dt = coco_gt.loadRes(results) if results else _no_detections(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = evaluated
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1]), "AP75": float(evaluator.stats[2])}
    # (thresholds, recall points, categories) at area "all" and 100 detections, the setting of stats[0].
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    category_ids = list(evaluator.params.catIds)  # sorted, as COCOeval orders them
    if novel:
        # Categories are scored independently, so this equals a COCOeval restricted by catIds.
        metrics["AP_novel"] = _mean_scored(precision[:, :, [k for k, c in enumerate(category_ids) if c in novel]])
        metrics["AP_base"] = _mean_scored(precision[:, :, [k for k, c in enumerate(category_ids) if c not in novel]])
    names = {category["id"]: category["name"] for category in dataset["categories"]}
    for k, category_id in enumerate(category_ids):
        if (precision[:, :, k] > -1).any():  # boxes other than crowd regions among the evaluated images
            metrics[f"AP/{names[category_id]}"] = _mean_scored(precision[:, :, k])
    return metrics


def lvis_evaluation(ground_truth: GroundTruth, results: Sequence[Mapping],
                    image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """LVIS v1 federated box AP: "AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf" and
    "AR@300", "ARs@300", "ARm@300", "ARl@300", equal to the official ``LVISEval``'s.

    The ground truth needs LVIS's fields: each category's ``frequency`` and each image's
    ``neg_category_ids`` and ``not_exhaustive_category_ids``. ``image_ids`` as in ``coco_evaluation``.
    """
    dataset = _dataset(ground_truth)
    return lvis_box_ap(dataset, _checked_results(dataset, results), _evaluated_images(dataset, image_ids))


def class_prior_detections(train_category_counts: Mapping[int, int], images: Sequence[tuple[int, int, int]],
                           box_size: tuple[float, float], max_detections: int = 100) -> list[dict]:
    """The detections of a detector that sees nothing: the class prior, in boxes laid out uniformly.

    The prior is add-one smoothed, p(c) = (n_c + 1) / (N + K) over the K categories of
    ``train_category_counts`` (n_c training boxes of c, N in all), so that categories never boxed in
    training (the novel ones) still get a small score. Each image ((image_id, width, height)) gets a
    g x g grid of boxes, g = floor(sqrt(max_detections / K)), of ``box_size`` (width and height as
    fractions of the image; the training boxes' median suits) centred in the cells and moved inside
    the image where they would stick out. Every box is listed once per category with score p(c):
    g² K detections per image, and K, more than ``max_detections``, when K exceeds it (g is at least 1).
    A model's AP means something only above this one's.
    """
    if not train_category_counts:
        raise ValueError("the class prior needs at least one category")
    if any(count < 0 for count in train_category_counts.values()):
        raise ValueError(f"category counts must be non-negative, got {dict(train_category_counts)}")
    width_fraction, height_fraction = box_size
    if not (0 < width_fraction <= 1 and 0 < height_fraction <= 1):
        raise ValueError(f"box_size must be fractions of the image in (0, 1], got {box_size}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be positive, got {max_detections}")
    num_categories = len(train_category_counts)
    total = sum(train_category_counts.values()) + num_categories
    prior = {int(c): (n + 1) / total for c, n in sorted(train_category_counts.items())}
    cells = max(1, math.isqrt(max_detections // num_categories))  # floor(sqrt(m / K)) without rounding error
    detections = []
    for image_id, width, height in images:
        if width <= 0 or height <= 0:
            raise ValueError(f"image {image_id} has size {width}x{height}")
        box_width, box_height = width_fraction * width, height_fraction * height
        for row in range(cells):
            y = _box_start((row + 0.5) / cells * height, box_height, height)
            for column in range(cells):
                x = _box_start((column + 0.5) / cells * width, box_width, width)
                for category_id, score in prior.items():
                    detections.append({"image_id": int(image_id), "category_id": category_id,
                                       "bbox": [x, y, box_width, box_height], "score": score})
    return detections


def _box_start(centre: float, size: float, limit: float) -> float:
    """Start of a box of ``size`` centred at ``centre``, moved to lie within [0, limit]."""
    return min(max(centre - size / 2, 0.0), limit - size)


def _dataset(ground_truth: GroundTruth) -> Mapping:
    if isinstance(ground_truth, Mapping):
        _check_document(ground_truth, "the ground truth")
        return ground_truth
    return _cached_document(*_file_key(ground_truth))


def _coco(ground_truth: GroundTruth, dataset: Mapping) -> COCO:
    if isinstance(ground_truth, Mapping):
        return _coco_from(dataset)
    return _cached_coco(*_file_key(ground_truth))


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    """The file and its version: an edited file is read again."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"ground-truth file {path} does not exist") from None
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _cached_document(path: str, mtime_ns: int, size: int) -> dict:
    with open(path) as file:
        document = json.load(file)
    _check_document(document, path)
    return document


@functools.lru_cache(maxsize=4)
def _cached_coco(path: str, mtime_ns: int, size: int) -> COCO:
    return _coco_from(_cached_document(path, mtime_ns, size))


def _coco_from(dataset: Mapping) -> COCO:
    """A pycocotools COCO over copies of the annotations: COCOeval writes an "ignore" flag into
    them, which LVIS evaluation of the same document must not see. LVIS annotations have no
    ``iscrowd``, which COCOeval reads; absent, it is 0, as COCOeval's own default takes it."""
    coco = COCO()
    annotations = [{"iscrowd": 0, **annotation} for annotation in dataset["annotations"]]
    coco.dataset = {**dataset, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _no_detections(coco_gt: COCO) -> COCO:
    coco = COCO()
    coco.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                    "annotations": []}
    coco.createIndex()
    return coco


def _check_document(document: Mapping, where: str) -> None:
    missing = [key for key in ("images", "annotations", "categories") if key not in document]
    if missing:
        raise ValueError(f"{where} is not a COCO instances document: it has no {missing}")


def _checked_results(dataset: Mapping, results: Sequence[Mapping]) -> list[dict]:
    """Copies of the results with plain ints and floats (pycocotools writes into its input and
    wants lists for boxes); an unknown image or category is refused, not silently dropped."""
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    checked = []
    for index, result in enumerate(results):
        missing = [key for key in RESULT_KEYS if key not in result]
        if missing:
            raise ValueError(f"detection {index} has no {missing}; COCO results need {list(RESULT_KEYS)}")
        bbox = [float(v) for v in result["bbox"]]
        score = float(result["score"])
        if len(bbox) != 4 or not all(math.isfinite(v) for v in [*bbox, score]):
            raise ValueError(f"detection {index} needs a finite [x, y, w, h] box and score, "
                             f"got bbox {result['bbox']} and score {result['score']}")
        image_id, category_id = int(result["image_id"]), int(result["category_id"])
        if image_id not in image_ids:
            raise ValueError(f"detection {index} is on image {image_id}, which the ground truth does not have")
        if category_id not in category_ids:
            raise ValueError(f"detection {index} has category {category_id}, which the ground truth does not have")
        checked.append({**result, "image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
    return checked


def _evaluated_images(dataset: Mapping, image_ids: Sequence[int] | None) -> list[int]:
    known = sorted({image["id"] for image in dataset["images"]})
    if image_ids is None:
        return known
    evaluated = sorted({int(image_id) for image_id in image_ids})
    if not evaluated:
        raise ValueError("image_ids is empty: there is nothing to evaluate")
    unknown = sorted(set(evaluated) - set(known))
    if unknown:
        raise ValueError(f"image_ids names images the ground truth does not have: {unknown[:10]}")
    return evaluated


def _known_categories(dataset: Mapping, category_ids: Sequence[int]) -> set[int]:
    chosen = {int(c) for c in category_ids}
    unknown = sorted(chosen - {category["id"] for category in dataset["categories"]})
    if unknown:
        raise ValueError(f"novel_category_ids names categories the ground truth does not have: {unknown}")
    return chosen


def _mean_scored(values: np.ndarray) -> float:
    """Mean of the entries COCOeval scored (> -1), as its summary takes them; -1 if none."""
    scored = values[values > -1]
    return float(np.mean(scored)) if scored.size else -1.0
