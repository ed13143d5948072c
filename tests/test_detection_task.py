"""Open-vocabulary detection end to end: a tiny fit from a pretrain checkpoint, its report, the
results JSON scored again by pycocotools itself, and predictions of words never boxed."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mammut.tasks.detection import best_class_per_box

import tiny_run

RECIPE = "configs/finetune_detection.yaml"


@pytest.fixture(scope="module")
def pretrained(tiny_demo, tmp_path_factory) -> Path:
    """A checkpoint of a tiny 64-pixel pretraining run, as `make finetune-detection` starts from."""
    out = tmp_path_factory.mktemp("pretrain")
    tiny_run.run("fit", tiny_demo, out, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                 *tiny_run.checkpoint_every(out, 2))
    return next(out.rglob("last.ckpt"))


def coco_ap(ground_truth: Path, results: Path, category_ids: list[int] | None = None) -> float:
    """pycocotools' AP of a results file, run directly."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ground_truth))
        evaluation = COCOeval(truth, truth.loadRes(str(results)), "bbox")
        evaluation.params.imgIds = sorted({r["image_id"] for r in json.loads(results.read_text())})
        if category_ids:
            evaluation.params.catIds = category_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


@pytest.mark.slow
def test_finetune_detection_reports_coco_and_lvis_ap_and_predicts_any_words(tiny_demo, tmp_path, pretrained,
                                                                             capsys):
    out = tmp_path / "detection"
    capsys.readouterr()
    tiny_run.run("fit", tiny_demo, out, f"--model.init_from={pretrained}", "--trainer.max_steps=3",
                 "--trainer.val_check_interval=3", "--trainer.logger.init_args.version=run", config=RECIPE)
    printed, messages = capsys.readouterr()
    # The 64-pixel checkpoint's position embedding fits the detector's 96-pixel grid.
    assert "position embedding resampled from a 8x8 to a 12x12 patch grid" in messages
    for row in ("AP", "AP50", "AP75", "AP_novel", "AP_base", "AP/circle", "AP/hexagon", "lvis_APr", "lvis_APf"):
        assert re.search(rf"^{re.escape(row)}\s+[\d.]+\s+[\d.]+", printed, re.MULTILINE), row
    logs = out / "finetune_detection" / "run"
    logged = tiny_run.scalars(logs)
    for tag in ("train/loss", "train/detection/focal", "train/detection/l1", "train/detection/giou",
                "val/detection/AP", "val_baseline/detection/AP", "val/detection/AP_novel",
                "val_baseline/detection/lvis_APr"):
        assert tag in logged, tag
    assert "val/detection/samples" in tiny_run.image_tags(logs)

    # The AP reported is pycocotools' own on the results file the run wrote.
    results = logs / "detections_val.json"
    ground_truth = tiny_demo / "annotations/instances_val.json"
    assert logged["val/detection/AP"][-1][1] == pytest.approx(coco_ap(ground_truth, results), abs=1e-6)
    novel = [c["id"] for c in json.loads(ground_truth.read_text())["categories"] if c["frequency"] == "r"]
    assert logged["val/detection/AP_novel"][-1][1] == pytest.approx(coco_ap(ground_truth, results, novel), abs=1e-6)

    # Any words at test time: here one that names no class of the data at all.
    checkpoint = logs / "checkpoints" / "last.ckpt"
    images = sorted((tiny_demo / "images/val").glob("*.jpg"))[:2]
    capsys.readouterr()
    tiny_run.run("predict", tiny_demo, tmp_path / "predict", f"--ckpt_path={checkpoint}",
                 f"--data.predict_images=[{','.join(map(str, images))}]", "--data.predict_words=[umbrella]",
                 "--model.draw_threshold=0.0", "--trainer.logger.init_args.version=run", config=RECIPE)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split("\t")[0] in map(str, images)]
    assert len(lines) == 2
    predict_dir = tmp_path / "predict" / "finetune_detection" / "run"
    predictions = json.loads((predict_dir / "predictions.json").read_text())
    assert predictions and {p["word"] for p in predictions} == {"umbrella"}
    assert {p["file_name"] for p in predictions} == set(map(str, images))
    assert sorted(p.name for p in (predict_dir / "predictions").iterdir()) == sorted(f"{i.stem}.png" for i in images)


def test_what_is_shown_is_each_box_once_with_its_best_class_and_no_overlapping_duplicate():
    results = [  # sorted by score, as DetectionTask.results gives them
        {"bbox": [10, 10, 20, 20], "category_id": 1, "score": 0.9},
        {"bbox": [10, 10, 20, 20], "category_id": 2, "score": 0.8},  # the same box, a worse class
        {"bbox": [11, 10, 20, 20], "category_id": 1, "score": 0.7},  # a neighbouring token's near copy
        {"bbox": [40, 40, 10, 10], "category_id": 2, "score": 0.6},
    ]
    assert best_class_per_box(results) == [results[0], results[3]]
    assert best_class_per_box([]) == []
