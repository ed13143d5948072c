"""Detection metrics: COCO AP equals pycocotools' COCOeval run by hand, LVIS AP equals the official
``lvis`` package's LVISEval, and the class-prior baseline lays out what it promises."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.util
import io
import json
import math
import statistics
import sys
import types
from collections import Counter

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mammut.data.demo.formats import instances_document
from mammut.data.demo.split import build_split
from mammut.metrics.detection import (
    class_prior_detections,
    coco_evaluation,
    lvis_evaluation,
)

# (id, name, frequency). Ids are not 1..K, so a position mistaken for an id shows; the "r" ones are novel.
CATEGORIES = [(2, "circle", "f"), (5, "square", "f"), (7, "triangle", "c"), (11, "star", "c"),
              (13, "hexagon", "r"), (17, "cross", "r")]
CATEGORY_IDS = [c[0] for c in CATEGORIES]
NOVEL = [c[0] for c in CATEGORIES if c[2] == "r"]
NAMES = {c[0]: c[1] for c in CATEGORIES}
IMAGE_SIZES = [(320, 240), (200, 200), (640, 480), (96, 128)]  # boxes of every COCO area range
NUM_IMAGES = 12
CROWD_IMAGE = 100  # the first image: it holds the crowd region
# The last image holds boxes on the area ranges' limits (32², 96²) and two boxes, A and B, that a
# detection overlaps equally: it must take B, the later one, so that a second detection can take A.
EDGE_IMAGE = CROWD_IMAGE + 7 * NUM_IMAGES
EDGE_BOXES = [(5, [10.0, 10.0, 32.0, 32.0]), (11, [150.0, 100.0, 96.0, 96.0]),
              (7, [100.0, 20.0, 20.0, 10.0]), (7, [110.0, 20.0, 20.0, 10.0])]
EDGE_DETECTIONS = [(5, [10.0, 10.0, 32.0, 32.0], 0.98), (11, [150.0, 100.0, 96.0, 96.0], 0.98),
                   (7, [105.0, 20.0, 20.0, 10.0], 0.97), (7, [100.0, 20.0, 20.0, 10.0], 0.96)]
LVIS_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
             "AR@300", "ARs@300", "ARm@300", "ARl@300"}


def ground_truth(seed: int = 0, first_annotation_id: int = 1) -> dict:
    """A small COCO instances document with LVIS's fields, a crowd region, objects of all sizes."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []

    def add(image_id, category_id, bbox, **fields):
        annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id,
                            "category_id": category_id, "bbox": bbox, "area": round(bbox[2] * bbox[3], 2),
                            "segmentation": [_polygon(bbox)], "iscrowd": 0, **fields})

    for index in range(NUM_IMAGES):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        image_id = CROWD_IMAGE + 7 * index
        # Every category has boxes: image k always holds one of category k.
        chosen = [CATEGORY_IDS[index]] if index < len(CATEGORY_IDS) else []
        chosen += [int(c) for c in rng.choice(CATEGORY_IDS, size=rng.integers(0, 5))]
        for category_id in chosen:
            w, h = rng.uniform(6, 0.6 * width), rng.uniform(6, 0.6 * height)
            add(image_id, category_id, _rounded([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]))
        if image_id == CROWD_IMAGE:
            mask = np.zeros((height, width), dtype=np.uint8, order="F")
            mask[150:230, 200:310] = 1
            rle = mask_utils.encode(mask)
            annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id,
                                "category_id": CATEGORY_IDS[0], "bbox": mask_utils.toBbox(rle).tolist(),
                                "area": float(mask_utils.area(rle)), "iscrowd": 1,
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
        present = sorted(set(chosen) | ({CATEGORY_IDS[0]} if image_id == CROWD_IMAGE else set()))
        absent = [c for c in CATEGORY_IDS if c not in present]
        # Some absent categories are verified negatives, the others unknown on this image.
        negatives = sorted(int(c) for c in absent if rng.random() < 0.6)
        not_exhaustive = sorted(int(c) for c in present if rng.random() < 0.3)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height,
                       "neg_category_ids": negatives, "not_exhaustive_category_ids": not_exhaustive})
    for category_id, bbox in EDGE_BOXES:
        add(EDGE_IMAGE, category_id, bbox)
    images.append({"id": EDGE_IMAGE, "file_name": f"{EDGE_IMAGE}.jpg", "width": 320, "height": 240,
                   "neg_category_ids": [c for c in CATEGORY_IDS if c not in (5, 7, 11)],
                   "not_exhaustive_category_ids": []})
    categories = [{"id": i, "name": n, "synonyms": [n], "frequency": f} for i, n, f in CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def random_results(gt: dict, seed: int, crowded_image: int | None = None) -> list[dict]:
    """Perfect, jittered, wrongly classed and random boxes, scores with ties; ``crowded_image`` gets
    350 more, past LVIS's 300 per image."""
    rng = np.random.default_rng(seed)
    sizes = {image["id"]: (image["width"], image["height"]) for image in gt["images"]}
    results = []

    def score():
        return float(round(rng.random(), 1) if rng.random() < 0.3 else rng.random())  # ties included

    for annotation in gt["annotations"]:
        x, y, w, h = annotation["bbox"]
        draw = rng.random()
        if draw > 0.85 or annotation["image_id"] == EDGE_IMAGE:
            continue  # missed, or given below
        category_id = annotation["category_id"]
        if draw > 0.3:  # jittered
            x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
            w, h = w * math.exp(rng.normal(0, 0.1)), h * math.exp(rng.normal(0, 0.1))
        if draw > 0.7:  # wrong class
            category_id = int(rng.choice([c for c in CATEGORY_IDS if c != category_id]))
        results.append({"image_id": annotation["image_id"], "category_id": category_id,
                        "bbox": _rounded([x, y, w, h]), "score": score()})
    for image_id, (width, height) in sizes.items():
        for _ in range(rng.integers(0, 10) + (350 if image_id == crowded_image else 0)):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            results.append({"image_id": image_id, "category_id": int(rng.choice(CATEGORY_IDS)),
                            "bbox": _rounded([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]),
                            "score": score()})
    results += [{"image_id": EDGE_IMAGE, "category_id": c, "bbox": b, "score": p} for c, b, p in EDGE_DETECTIONS]
    results.insert(int(rng.integers(len(results))), {"image_id": CROWD_IMAGE + 7, "category_id": CATEGORY_IDS[1],
                                                      "bbox": [10.0, 10.0, 0.0, 30.0], "score": 0.99})  # area 0
    return [results[i] for i in rng.permutation(len(results))]


def perfect_results(gt: dict, image_ids=None) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt["annotations"] if not a["iscrowd"] and (image_ids is None or a["image_id"] in image_ids)]


def _rounded(bbox):
    return [round(float(v), 2) for v in bbox]


def _polygon(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def direct_cocoeval(gt: dict, results: list[dict], image_ids=None, category_ids=None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        if category_ids is not None:
            evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


# --- COCO ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_evaluation_equals_cocoeval(seed):
    gt = ground_truth(seed)
    results = random_results(gt, seed)
    metrics = coco_evaluation(gt, results, novel_category_ids=NOVEL)

    direct = direct_cocoeval(gt, results)
    assert [metrics["AP"], metrics["AP50"], metrics["AP75"]] == list(direct.stats[:3])
    assert 0 < metrics["AP"] < 1
    for k, category_id in enumerate(direct.params.catIds):
        precision = direct.eval["precision"][:, :, k, 0, -1]
        assert metrics[f"AP/{NAMES[category_id]}"] == np.mean(precision[precision > -1])
    assert {key for key in metrics if key.startswith("AP/")} == {f"AP/{name}" for name in NAMES.values()}
    assert metrics["AP_novel"] == direct_cocoeval(gt, results, category_ids=NOVEL).stats[0]
    base = [c for c in CATEGORY_IDS if c not in NOVEL]
    assert metrics["AP_base"] == direct_cocoeval(gt, results, category_ids=base).stats[0]


def test_coco_perfect_detections_score_one():
    gt = ground_truth()
    metrics = coco_evaluation(gt, perfect_results(gt), novel_category_ids=NOVEL)
    assert set(metrics.values()) == {1.0}
    assert len(metrics) == 3 + 2 + len(CATEGORIES)


def test_coco_crowd_region_is_neither_missed_nor_a_false_positive():
    gt = ground_truth()
    crowd = next(a for a in gt["annotations"] if a["iscrowd"])
    # Undetected, as in perfect_results, it is not a miss; detected first, it is not a false positive.
    on_crowd = {"image_id": crowd["image_id"], "category_id": crowd["category_id"], "bbox": crowd["bbox"],
                "score": 0.99}
    assert coco_evaluation(gt, perfect_results(gt) + [on_crowd])["AP"] == 1.0
    # The same detection elsewhere is a false positive.
    elsewhere = {**on_crowd, "bbox": [0.0, 0.0, 40.0, 40.0]}
    assert coco_evaluation(gt, perfect_results(gt) + [elsewhere])["AP"] < 1.0


def test_coco_image_ids_limit_the_evaluation():
    gt = ground_truth()
    evaluated = [image["id"] for image in gt["images"][:5]]
    partial = perfect_results(gt, image_ids=evaluated)
    assert coco_evaluation(gt, partial, image_ids=evaluated)["AP"] == 1.0
    assert coco_evaluation(gt, partial)["AP"] < 1.0  # the other images' objects count as missed

    results = random_results(gt, seed=3)
    metrics = coco_evaluation(gt, results, image_ids=evaluated)
    assert metrics["AP"] == direct_cocoeval(gt, results, image_ids=evaluated).stats[0]


def test_coco_empty_results_score_zero():
    gt = ground_truth()
    metrics = coco_evaluation(gt, [], novel_category_ids=NOVEL)
    assert metrics == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP_novel": 0.0, "AP_base": 0.0,
                       **{f"AP/{name}": 0.0 for name in NAMES.values()}}


def test_ground_truth_file_equals_dict_and_is_read_again_when_changed(tmp_path):
    gt = ground_truth()
    results = random_results(gt, seed=4)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    assert coco_evaluation(path, results) == coco_evaluation(gt, results)
    assert lvis_evaluation(str(path), results) == lvis_evaluation(gt, results)

    fewer = {**gt, "annotations": gt["annotations"][::2]}
    path.write_text(json.dumps(fewer))
    assert coco_evaluation(path, results) == coco_evaluation(fewer, results) != coco_evaluation(gt, results)
    assert lvis_evaluation(path, results) == lvis_evaluation(fewer, results)


def test_inputs_are_not_modified():
    gt = ground_truth()
    results = random_results(gt, seed=5, crowded_image=CROWD_IMAGE)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    coco_evaluation(gt, results, novel_category_ids=NOVEL)
    lvis_evaluation(gt, results)
    assert gt == gt_before and results == results_before


def test_inconsistent_inputs_are_refused():
    gt = ground_truth()
    detection = {"image_id": CROWD_IMAGE, "category_id": CATEGORY_IDS[0], "bbox": [1, 2, 3, 4], "score": 0.5}
    for evaluate in (coco_evaluation, lvis_evaluation):
        with pytest.raises(ValueError, match="image 999"):
            evaluate(gt, [{**detection, "image_id": 999}])
        with pytest.raises(ValueError, match="category 3"):
            evaluate(gt, [{**detection, "category_id": 3}])
        with pytest.raises(ValueError, match="score"):
            evaluate(gt, [{key: value for key, value in detection.items() if key != "score"}])
        with pytest.raises(ValueError, match="finite"):
            evaluate(gt, [{**detection, "bbox": [1, 2, math.nan, 4]}])
        with pytest.raises(ValueError, match=r"\[999\]"):
            evaluate(gt, [detection], image_ids=[CROWD_IMAGE, 999])
    with pytest.raises(ValueError, match="novel_category_ids"):
        coco_evaluation(gt, [detection], novel_category_ids=[3])
    with pytest.raises(ValueError, match="neg_category_ids"):
        lvis_evaluation({**gt, "images": [{"id": i["id"], "width": 9, "height": 9} for i in gt["images"]]}, [detection])
    with pytest.raises(ValueError, match="frequency"):
        lvis_evaluation({**gt, "categories": [{"id": c, "name": n} for c, n in NAMES.items()]}, [detection])


# --- LVIS ---------------------------------------------------------------------------------------------


@functools.cache
def _reference_lvis() -> types.SimpleNamespace:
    """The official evaluation from the ``lvis`` package (dev extra), loaded without its visualiser.

    Shim: lvis/__init__.py imports lvis.vis, which needs OpenCV. An empty package module with the
    installed folder as its ``__path__`` stands in for it while lvis.lvis, lvis.results and
    lvis.eval are imported; sys.modules is then put back, the loaded modules keeping their references.
    """
    spec = importlib.util.find_spec("lvis")
    if spec is None:
        pytest.skip("the reference needs the lvis package: pip install -e '.[dev]'")
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "lvis" or name.startswith("lvis.")}
    package = types.ModuleType("lvis")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["lvis"] = package
    try:
        lvis = importlib.import_module("lvis.lvis")
        evaluation = importlib.import_module("lvis.eval")
    finally:
        for name in [n for n in sys.modules if n == "lvis" or n.startswith("lvis.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    return types.SimpleNamespace(LVIS=lvis.LVIS, LVISEval=evaluation.LVISEval)


def reference_lvis(monkeypatch, tmp_path, gt: dict, results: list[dict], image_ids=None) -> dict[str, float]:
    reference = _reference_lvis()
    # Shim: lvis/eval.py casts with np.float, an alias numpy 1.24 removed; for this test only it is float.
    monkeypatch.setattr(np, "float", float, raising=False)
    path = tmp_path / "lvis_gt.json"
    path.write_text(json.dumps(gt))
    evaluator = reference.LVISEval(reference.LVIS(str(path)), copy.deepcopy(results), "bbox")
    if image_ids is not None:
        evaluator.params.img_ids = list(image_ids)
    evaluator.run()
    return {key: float(value) for key, value in evaluator.get_results().items()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lvis_evaluation_equals_lvis_package(seed, monkeypatch, tmp_path):
    # Annotation ids from 0, a box flagged "ignore", 350 detections on one image: the reference's
    # quirks (see mammut.metrics.lvis_eval) all come into play.
    gt = ground_truth(seed, first_annotation_id=0)
    gt["annotations"][3]["ignore"] = 1
    results = random_results(gt, seed, crowded_image=CROWD_IMAGE + 7 * (seed % NUM_IMAGES))
    expected = reference_lvis(monkeypatch, tmp_path, gt, results)
    metrics = lvis_evaluation(gt, results)
    assert set(metrics) == set(expected) == LVIS_KEYS
    for key in LVIS_KEYS:
        assert metrics[key] == pytest.approx(expected[key], rel=0, abs=1e-12), key
    assert 0 < metrics["AP"] < 1 and metrics["APr"] > -1 and metrics["APl"] > -1

    evaluated = [image["id"] for image in gt["images"][seed::2]]
    expected = reference_lvis(monkeypatch, tmp_path, gt, results, image_ids=evaluated)
    metrics = lvis_evaluation(gt, results, image_ids=evaluated)
    for key in LVIS_KEYS:
        assert metrics[key] == pytest.approx(expected[key], rel=0, abs=1e-12), key


def _federated_case() -> dict:
    """Image 1: an "a" box, "b" verified absent. Image 2: an "a" box, "b" unknown. Image 3: a "b"
    box, "b" not exhaustively boxed, "a" verified absent."""
    boxes = [(1, 1, [10.0, 10.0, 20.0, 20.0]), (2, 1, [30.0, 30.0, 20.0, 20.0]), (3, 2, [5.0, 5.0, 30.0, 30.0])]
    return {
        "images": [{"id": 1, "width": 64, "height": 64, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
                   {"id": 2, "width": 64, "height": 64, "neg_category_ids": [], "not_exhaustive_category_ids": []},
                   {"id": 3, "width": 64, "height": 64, "neg_category_ids": [1], "not_exhaustive_category_ids": [2]}],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for n, (i, c, b) in enumerate(boxes)],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}],
    }


def test_lvis_ignores_detections_the_labels_cannot_judge():
    gt = _federated_case()
    perfect = perfect_results(gt)
    assert lvis_evaluation(gt, perfect)["AP"] == 1.0
    stray = {"category_id": 2, "bbox": [40.0, 40.0, 15.0, 15.0], "score": 0.95}
    # "b" is neither boxed nor verified absent on image 2: a "b" detection there changes nothing.
    assert lvis_evaluation(gt, perfect + [{**stray, "image_id": 2}]) == lvis_evaluation(gt, perfect)
    # Image 3 is not exhaustively boxed for "b": an unmatched "b" detection is not a false positive.
    assert lvis_evaluation(gt, perfect + [{**stray, "image_id": 3}]) == lvis_evaluation(gt, perfect)
    # Where "b" is verified absent, or exhaustively boxed, the same detection is a false positive.
    assert lvis_evaluation(gt, perfect + [{**stray, "image_id": 1}])["APr"] < 1.0
    gt["images"][2]["not_exhaustive_category_ids"] = []
    assert lvis_evaluation(gt, perfect + [{**stray, "image_id": 3}])["APr"] < 1.0


def test_lvis_empty_results_score_zero():
    metrics = lvis_evaluation(ground_truth(), [])
    assert metrics["AP"] == metrics["APr"] == metrics["APf"] == metrics["AR@300"] == 0.0


# --- class prior --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_categories", "max_detections", "grid"),
                         [(6, 100, 4), (3, 10, 1), (5, 300, 7), (200, 100, 1)])
def test_class_prior_layout(num_categories, max_detections, grid):
    counts = {10 + c: (c * 37) % 11 for c in range(num_categories)}  # a few zeros: never boxed in training
    images = [(1, 640, 480), (2, 100, 300)]
    detections = class_prior_detections(counts, images, (0.1, 0.05), max_detections=max_detections)
    assert Counter(d["image_id"] for d in detections) == {1: grid * grid * num_categories,
                                                         2: grid * grid * num_categories}
    total = sum(counts.values()) + num_categories
    for d in detections:
        assert d["score"] == (counts[d["category_id"]] + 1) / total
    assert math.fsum({c: d["score"] for d in detections for c in [d["category_id"]]}.values()) == pytest.approx(1)
    sizes = {i: (w, h) for i, w, h in images}
    for d in detections:
        width, height = sizes[d["image_id"]]
        x, y, w, h = d["bbox"]
        assert (w, h) == pytest.approx((0.1 * width, 0.05 * height))
        centre = ((x + w / 2) * grid / width - 0.5, (y + h / 2) * grid / height - 0.5)  # integer cell indices
        assert centre == pytest.approx(tuple(round(v) for v in centre))


def test_class_prior_boxes_stay_inside_the_image():
    detections = class_prior_detections({1: 5, 2: 0}, [(7, 64, 48)], (0.6, 0.9), max_detections=18)
    assert len(detections) == 3 * 3 * 2
    for d in detections:
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 + 1e-9 and y + h <= 48 + 1e-9
        assert (w, h) == pytest.approx((0.6 * 64, 0.9 * 48))


def test_class_prior_refuses_nonsense():
    with pytest.raises(ValueError, match="category"):
        class_prior_detections({}, [(1, 64, 64)], (0.2, 0.2))
    with pytest.raises(ValueError, match="box_size"):
        class_prior_detections({1: 3}, [(1, 64, 64)], (0.0, 0.2))


def test_class_prior_ap_on_demo_world_is_small():
    train = instances_document(build_split("train", 120, 0, 64), "train", 0, 64)
    val = instances_document(build_split("val", 60, 0, 64), "val", 0, 64)
    sizes = {image["id"]: (image["width"], image["height"]) for image in train["images"]}
    boxed = Counter(a["category_id"] for a in train["annotations"])
    counts = {c["id"]: boxed[c["id"]] for c in train["categories"]}
    box_size = tuple(statistics.median(a["bbox"][k] / sizes[a["image_id"]][k - 2] for a in train["annotations"])
                     for k in (2, 3))
    detections = class_prior_detections(counts, [(i["id"], i["width"], i["height"]) for i in val["images"]], box_size)
    novel = [c["id"] for c in val["categories"] if c["frequency"] == "r"]
    assert novel and all(counts[c] == 0 for c in novel)
    metrics = coco_evaluation(val, detections, novel_category_ids=novel)
    assert 0 < metrics["AP"] < 0.05 and 0 <= metrics["AP_novel"] < 0.05
