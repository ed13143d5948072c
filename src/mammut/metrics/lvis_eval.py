"""LVIS v1 federated box AP, scored as the official evaluation scores it (Gupta et al., CVPR 2019).

The numbers equal those of ``LVISEval(gt, results, "bbox")`` in lvis-dataset/lvis-api (the ``lvis``
package, 0.5.3). That package cannot be imported on current numpy (it uses ``np.float``) and pulls
in OpenCV for its visualiser, hence this implementation of the same rules.

LVIS labels each category on a subset of the images only, so a detection is judged only where the
ground truth can judge it:

- a category is evaluated on an image only if the image has a box of it (positive) or lists it in
  ``neg_category_ids`` (checked absent); other detections on that image are dropped, neither right
  nor wrong;
- on an image listing the category in ``not_exhaustive_category_ids`` some instances were left
  unboxed, so a detection that matches no box is ignored instead of counted as a false positive;
- each image keeps its 300 highest-scoring detections over all categories (ties: the one listed first).

Matching and averaging are COCO's: per image and category, detections by decreasing score take the
free box of highest IoU (ties: the later box), boxes to ignore last; 10 IoU thresholds 0.50:0.05:0.95;
precision read at 101 recall points after making it non-increasing; AP averages over thresholds,
recall points and categories. APr/APc/APf average the categories whose ``frequency`` is "r"/"c"/"f";
APs/APm/APl (and the ARs) count only boxes and detections of area up to 32², 32² to 96², over 96²
(ends inclusive), treating the others as ignored. AR is the recall after all detections.

Behaviours of the reference kept so that the numbers stay equal:

- ``iscrowd`` is not read: a crowd region is an ordinary box. Only a truthy ``ignore`` field on an
  annotation makes it ignored (a match to it is neither true nor false).
- Boxes and detections whose area is 0 are dropped first; a box's area is its ``area`` field, a
  detection's is w * h. The 300-per-image cut comes before that, over every image and category.
- A match is recorded by the matched annotation's id, so a match to an annotation whose id is 0
  counts as a false positive.
- A mean over nothing is -1: e.g. APr when no rare category has a box among the evaluated images,
  APl when no box is large. A category without boxes among the evaluated images is left out of
  every mean, whatever was detected for it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # linspace, not arange: 0.75 must be exactly there
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS_PER_IMAGE = 300
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
FREQUENCIES = ("r", "c", "f")  # rare, common, frequent: in < 10, 10-99, >= 100 training images
# IoU of a perfect match is 1 only up to rounding; the reference caps the threshold just below.
IOU_CAP = 1 - 1e-10


def lvis_box_ap(dataset: Mapping, results: Sequence[Mapping], image_ids: Sequence[int]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300.

    ``dataset`` is an LVIS-style instances document; ``results`` are COCO result dicts whose image
    and category ids the dataset knows (checked by the caller); only ``image_ids`` are evaluated.
    Nothing given is modified.
    """
    category_ids = sorted(category["id"] for category in dataset["categories"])
    groups = _frequency_groups(dataset["categories"], category_ids)
    evaluated = sorted({int(image_id) for image_id in image_ids})
    images = {image["id"]: image for image in dataset["images"]}
    negatives, not_exhaustive = {}, {}
    for image_id in evaluated:
        image = images[image_id]
        for field, table in (("neg_category_ids", negatives), ("not_exhaustive_category_ids", not_exhaustive)):
            if field not in image:
                raise ValueError(f"image {image_id} has no {field!r}: LVIS evaluation needs the federated "
                                 "labels of every evaluated image")
            table[image_id] = set(image[field])

    boxes = _boxes(dataset["annotations"], set(evaluated), set(category_ids))
    positives = defaultdict(set)
    for image_id, category_id in boxes:
        positives[image_id].add(category_id)
    detections = defaultdict(list)
    for detection in _top_detections(results):
        image_id, category_id = detection["image_id"], detection["category_id"]
        if image_id not in negatives or not 0 < _detection_area(detection) < math.inf:
            continue
        if category_id in positives[image_id] or category_id in negatives[image_id]:
            detections[image_id, category_id].append(detection)

    # Per category and area range: one (scores, matched, ignored, boxes counted) per image, in image order.
    per_image: dict[tuple[int, int], list] = defaultdict(list)
    index_of = {category_id: k for k, category_id in enumerate(category_ids)}
    for image_id, category_id in sorted(set(boxes) | set(detections)):
        pair = _evaluate_pair(boxes.get((image_id, category_id), []), detections.get((image_id, category_id), []),
                              category_id in not_exhaustive[image_id])
        for area_index, evaluation in enumerate(pair):
            per_image[index_of[category_id], area_index].append(evaluation)
    precision, recall = _accumulate(per_image, len(category_ids))
    return _summary(precision, recall, groups)


def _frequency_groups(categories: Sequence[Mapping], category_ids: list[int]) -> dict[str, list[int]]:
    """Indices (into the sorted category ids) of the categories of each frequency."""
    frequency_of = {}
    for category in categories:
        frequency = category.get("frequency")
        if frequency not in FREQUENCIES:
            raise ValueError(f"category {category['id']} ({category.get('name')!r}) has frequency {frequency!r}; "
                             f"LVIS evaluation needs one of {FREQUENCIES}")
        frequency_of[category["id"]] = frequency
    return {f: [k for k, c in enumerate(category_ids) if frequency_of[c] == f] for f in FREQUENCIES}


def _boxes(annotations: Sequence[Mapping], images: set[int], categories: set[int]) -> dict[tuple[int, int], list]:
    """Annotations of the evaluated images by (image, category), in file order; area 0 dropped."""
    boxes = defaultdict(list)
    for annotation in annotations:
        key = (annotation["image_id"], annotation["category_id"])
        if key[0] in images and key[1] in categories and 0 < annotation["area"] < math.inf:
            boxes[key].append(annotation)
    return dict(boxes)


def _top_detections(results: Sequence[Mapping]) -> list[Mapping]:
    """Each image's ``MAX_DETECTIONS_PER_IMAGE`` best detections; a stable sort keeps the first of equals."""
    by_image = defaultdict(list)
    for detection in results:
        by_image[detection["image_id"]].append(detection)
    kept = []
    for detections in by_image.values():
        if len(detections) > MAX_DETECTIONS_PER_IMAGE:
            detections = sorted(detections, key=lambda d: d["score"], reverse=True)[:MAX_DETECTIONS_PER_IMAGE]
        kept.extend(detections)
    return kept


def _detection_area(detection: Mapping) -> float:
    return detection["bbox"][2] * detection["bbox"][3]


def _evaluate_pair(boxes: list[Mapping], detections: list[Mapping], not_exhaustive: bool) -> list[tuple]:
    """One image and category, for each area range: (scores, matched, ignored, boxes counted).

    ``scores`` are the detections' in decreasing order; ``matched`` and ``ignored`` are (thresholds,
    detections) booleans.
    """
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    detections = [detections[i] for i in order]
    scores = scores[order]
    areas = np.array([_detection_area(d) for d in detections], dtype=np.float64)
    if boxes and detections:
        ious = mask_utils.iou(np.array([d["bbox"] for d in detections], dtype=np.float64),
                              np.array([b["bbox"] for b in boxes], dtype=np.float64),
                              np.zeros(len(boxes), dtype=np.uint8))
    else:
        ious = np.zeros((len(detections), len(boxes)))
    # Only the 0 test of the matched box's id is kept: see the module docstring.
    counts_as_match = np.array([b["id"] != 0 for b in boxes], dtype=bool)
    flagged = [bool(b.get("ignore", 0)) for b in boxes]

    evaluations, matches = [], {}
    for low, high in AREA_RANGES.values():
        box_ignored = np.array([f or not low <= b["area"] <= high for f, b in zip(flagged, boxes)], dtype=bool)
        key = box_ignored.tobytes()  # area ranges often ignore the same boxes: match once
        if key not in matches:
            matches[key] = _greedy_match(ious, box_ignored, counts_as_match)
        matched, ignored = matches[key]
        outside = (areas < low) | (areas > high) | not_exhaustive
        ignored = ignored | (~matched & outside[None, :])
        evaluations.append((scores, matched, ignored, int(np.count_nonzero(~box_ignored))))
    return evaluations


def _greedy_match(ious: np.ndarray, box_ignored: np.ndarray, counts_as_match: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Match detections (rows, by decreasing score) to boxes (columns) at every IoU threshold.

    A detection takes the free box of highest IoU at or above the threshold, the later of equal ones,
    looking at boxes to ignore only if no other box qualifies. Returns (matched, ignored), both
    (thresholds, detections): ``ignored`` marks matches to boxes to ignore.
    """
    num_detections, num_boxes = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), num_detections), dtype=bool)
    ignored = np.zeros_like(matched)
    if num_detections == 0 or num_boxes == 0:
        return matched, ignored
    kept = [g for g in range(num_boxes) if not box_ignored[g]]
    to_ignore = [g for g in range(num_boxes) if box_ignored[g]]
    rows = ious.tolist()
    best = ious.max(axis=1).tolist()
    for t, threshold in enumerate(IOU_THRESHOLDS.tolist()):
        floor = min(threshold, IOU_CAP)
        free = [True] * num_boxes
        for d, row in enumerate(rows):
            if best[d] < floor:
                continue
            g = _best_free_box(row, kept, free, floor)
            if g < 0:
                g = _best_free_box(row, to_ignore, free, floor)
            if g < 0:
                continue
            free[g] = False
            matched[t, d] = counts_as_match[g]
            ignored[t, d] = box_ignored[g]
    return matched, ignored


def _best_free_box(row: list[float], candidates: list[int], free: list[bool], floor: float) -> int:
    best, best_iou = -1, floor
    for g in candidates:
        if free[g] and row[g] >= best_iou:
            best, best_iou = g, row[g]
    return best


def _accumulate(per_image: Mapping[tuple[int, int], list], num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision (thresholds, recall points, categories, areas) and recall (thresholds, categories,
    areas); -1 where a category has no box to count."""
    num_thresholds, num_areas = len(IOU_THRESHOLDS), len(AREA_RANGES)
    precision = -np.ones((num_thresholds, len(RECALL_THRESHOLDS), num_categories, num_areas))
    recall = -np.ones((num_thresholds, num_categories, num_areas))
    for (k, a), evaluations in per_image.items():
        num_boxes = sum(e[3] for e in evaluations)
        if num_boxes == 0:
            continue
        scores = np.concatenate([e[0] for e in evaluations])
        order = np.argsort(-scores, kind="mergesort")  # ties: earlier image first
        matched = np.concatenate([e[1] for e in evaluations], axis=1)[:, order]
        ignored = np.concatenate([e[2] for e in evaluations], axis=1)[:, order]
        true_positives = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
        false_positives = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
        for t in range(num_thresholds):
            tp, fp = true_positives[t], false_positives[t]
            recalled = tp / num_boxes
            recall[t, k, a] = recalled[-1] if len(tp) else 0
            # np.spacing(1) keeps 0 / 0 away, exactly as the reference adds it.
            ratio = tp / (fp + tp + np.spacing(1))
            ratio = np.maximum.accumulate(ratio[::-1])[::-1]  # best precision at this recall or beyond
            at = np.searchsorted(recalled, RECALL_THRESHOLDS, side="left")
            reached = at < len(ratio)
            row = np.zeros(len(RECALL_THRESHOLDS))
            row[reached] = ratio[at[reached]]
            precision[t, :, k, a] = row
    return precision, recall


def _summary(precision: np.ndarray, recall: np.ndarray, groups: Mapping[str, list[int]]) -> dict[str, float]:
    area = {name: a for a, name in enumerate(AREA_RANGES)}
    table = {
        "AP": _mean_scored(precision[:, :, :, area["all"]]),
        "AP50": _mean_scored(precision[IOU_THRESHOLDS == 0.5][:, :, :, area["all"]]),
        "AP75": _mean_scored(precision[IOU_THRESHOLDS == 0.75][:, :, :, area["all"]]),
        "APs": _mean_scored(precision[:, :, :, area["small"]]),
        "APm": _mean_scored(precision[:, :, :, area["medium"]]),
        "APl": _mean_scored(precision[:, :, :, area["large"]]),
    }
    for frequency in FREQUENCIES:
        table[f"AP{frequency}"] = _mean_scored(precision[:, :, groups[frequency], area["all"]])
    table[f"AR@{MAX_DETECTIONS_PER_IMAGE}"] = _mean_scored(recall[:, :, area["all"]])
    for name in ("small", "medium", "large"):
        table[f"AR{name[0]}@{MAX_DETECTIONS_PER_IMAGE}"] = _mean_scored(recall[:, :, area[name]])
    return table


def _mean_scored(values: np.ndarray) -> float:
    """Mean of the entries that were scored (> -1), in C order as the reference takes them; -1 if none."""
    scored = values[values > -1]
    return float(np.mean(scored)) if scored.size else -1.0
