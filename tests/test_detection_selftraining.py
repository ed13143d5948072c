"""Self-training for open-vocabulary detection: queries from captions, pseudo-boxes kept by OWL-ST's
thresholds, the LVIS file they make (read by the detection reader, scored by the federated
evaluation), their quality against true boxes, and a tiny round end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mammut.data.caption_queries import caption_queries, image_queries
from mammut.data.detection_dataset import DetectionDataset
from mammut.data.box_transforms import DetectionTransform
from mammut.data.instances import read_instances
from mammut.data.json_records import write_json
from mammut.metrics.detection import lvis_evaluation
from mammut.tasks.detection.pseudo_label_quality import pseudo_label_quality
from mammut.tasks.detection.pseudo_labels import (PseudoBox, PseudoLabelConfig, image_pseudo_boxes, lvis_frequency,
                                                  pseudo_label_file)
from mammut.tasks.detection.self_training import self_train

import tiny_run
from conftest import REPO

RECIPE = "configs/finetune_detection.yaml"


# --- queries from captions ---------------------------------------------------------------------

@pytest.mark.parametrize("caption, expected", [
    ("a large red circle", ["large red circle", "red circle", "circle"]),
    ("a small blue square to the left of a red star", ["small blue square", "blue square", "square", "red star", "star"]),
    ("two shapes: a green triangle and a yellow hexagon",
     ["shapes", "green triangle", "triangle", "yellow hexagon", "hexagon"]),
    ("A Red CROSS, above 2 purple crosses.", ["red cross", "cross", "purple crosses", "crosses"]),
    ("the very big old brown dog", ["old brown dog", "brown dog", "dog"]),
])
def test_queries_are_each_phrase_object_word_with_its_adjectives(caption, expected):
    assert caption_queries(caption, max_words=3) == expected


def test_places_the_picture_and_stop_words_give_no_query_and_an_image_gathers_its_captions_once():
    assert caption_queries("a cat on the left") == ["cat"]
    assert caption_queries("in the middle of it") == []
    assert caption_queries("an image of a red star on a gray background") == ["red star", "star"]
    assert image_queries(["a red star", "a star next to a circle"]) == ["red star", "star", "circle"]
    assert caption_queries("a small red star", max_words=1) == ["star"]


# --- pseudo-boxes ------------------------------------------------------------------------------

def test_each_box_takes_its_best_own_query_and_the_thresholds_keep_what_owl_st_keeps():
    config = PseudoLabelConfig(box_threshold=0.1, image_threshold=0.3)
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]])
    probabilities = torch.tensor([[0.9, 0.05, 0.95],   # query 2 is not this image's: query 0 wins
                                  [0.02, 0.2, 0.0],    # kept at 0.2 >= 0.1, as query 1
                                  [0.05, 0.08, 0.5]])  # below 0.1 for its own queries: dropped
    found = image_pseudo_boxes(probabilities, boxes, own_queries=[0, 1], size=(100, 200), config=config)
    assert [(b.query, b.score) for b in found] == [(0, 0.9), (1, 0.2)]
    # cx, cy, w, h fractions -> x, y, w, h pixels of a 200 x 100 image
    assert found[0].box == [0.0, 0.0, 100.0, 50.0] and found[1].box == [130.0, 65.0, 40.0, 20.0]
    # An image whose best box is under image_threshold gives nothing at all.
    assert image_pseudo_boxes(probabilities * 0.3, boxes, [0, 1], (100, 200), config) == []
    assert image_pseudo_boxes(probabilities, boxes, [], (100, 200), config) == []
    with pytest.raises(ValueError, match="box_threshold <= image_threshold"):
        PseudoLabelConfig(box_threshold=0.5, image_threshold=0.3)


def test_lvis_frequency_groups():
    assert [lvis_frequency(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]


def labelled(tmp_path: Path) -> tuple[Path, dict]:
    """A pseudo-label file of three 100 x 100 images, written where the images are."""
    images = []
    for image_id in (1, 2, 3):
        from PIL import Image
        Image.new("RGB", (100, 100), "white").save(tmp_path / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 100, "height": 100})
    queries = ["red hexagon", "hexagon", "blue circle", "circle", "star"]
    image_queries_ = {1: [0, 1], 2: [2, 3], 3: [3, 4]}
    boxes = {1: [PseudoBox(0, [10.0, 10.0, 30.0, 30.0], 0.8)],
             2: [PseudoBox(2, [50.0, 50.0, 20.0, 20.0], 0.6), PseudoBox(3, [5.0, 5.0, 10.0, 10.0], 0.15)],
             3: []}
    data = pseudo_label_file(images, queries, image_queries_, boxes, PseudoLabelConfig(num_negatives=50))
    file = tmp_path / "pseudo_labels.json"
    write_json(file, data)
    return file, data


def test_the_file_is_lvis_with_federated_negatives_from_other_images_queries(tmp_path):
    file, data = labelled(tmp_path)
    names = {c["id"]: c["name"] for c in data["categories"]}
    # Only queries that boxed something are classes; "star" boxed nothing, "hexagon" neither.
    assert sorted(names.values()) == ["blue circle", "circle", "red hexagon"]
    assert all(c["frequency"] == "r" for c in data["categories"])
    by_id = {image["id"]: image for image in data["images"]}
    assert set(by_id) == {1, 2} and data["info"]["left_out_image_ids"] == [3]
    # Image 1 (a red hexagon) is not the circles': both are negatives; its own query is not exhaustive.
    assert sorted(names[c] for c in by_id[1]["neg_category_ids"]) == ["blue circle", "circle"]
    assert [names[c] for c in by_id[1]["not_exhaustive_category_ids"]] == ["red hexagon"]
    # Image 2 asked for circles: "red hexagon" is a negative, its own circles are not exhaustive.
    assert [names[c] for c in by_id[2]["neg_category_ids"]] == ["red hexagon"]

    instances = read_instances(file, tmp_path)  # the detection reader, as training reads it
    assert [r.image_id for r in instances.records] == [1, 2]
    assert [len(r.boxes) for r in instances.records] == [1, 2]
    dataset = DetectionDataset(instances.records, instances.categories, DetectionTransform(64, train=False),
                               train=False)
    known = dataset[0].known_categories  # image 1: its negatives are known absent, its own query is not
    assert [names[c.id] for c, k in zip(instances.categories, known.tolist()) if k] == ["blue circle", "circle"]
    # ... and the federated evaluation scores detections against it: the right box is a hit.
    results = [{"image_id": 1, "category_id": next(i for i, n in names.items() if n == "red hexagon"),
                "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.9}]
    scores = lvis_evaluation(file, results, [1, 2])
    assert scores["APr"] == pytest.approx(1.0 / 3, abs=1e-6)  # one of three rare classes found, perfectly


def test_the_negatives_are_drawn_at_most_num_negatives_and_for_a_seed(tmp_path):
    images = [{"id": k, "file_name": f"{k}.jpg", "width": 10, "height": 10} for k in range(1, 31)]
    queries = [f"shape{k}" for k in range(1, 31)]
    boxes = {k: [PseudoBox(k - 1, [1.0, 1.0, 5.0, 5.0], 0.9)] for k in range(1, 31)}
    own = {k: [k - 1] for k in range(1, 31)}
    one = pseudo_label_file(images, queries, own, boxes, PseudoLabelConfig(num_negatives=5, seed=1))
    again = pseudo_label_file(images, queries, own, boxes, PseudoLabelConfig(num_negatives=5, seed=1))
    other = pseudo_label_file(images, queries, own, boxes, PseudoLabelConfig(num_negatives=5, seed=2))
    assert all(len(image["neg_category_ids"]) == 5 for image in one["images"])
    assert one == again and one != other


def test_quality_counts_precision_and_recall_per_true_class_and_novel_apart(tmp_path):
    file, data = labelled(tmp_path)
    truth = {"images": [{"id": k, "file_name": f"{k}.jpg", "width": 100, "height": 100} for k in (1, 2, 3)],
             "categories": [{"id": 1, "name": "hexagon", "frequency": "r"}, {"id": 2, "name": "circle", "frequency": "f"},
                            {"id": 3, "name": "star", "frequency": "f"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [11, 11, 30, 30], "area": 900, "iscrowd": 0},
                             {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
                             {"id": 3, "image_id": 2, "category_id": 2, "bbox": [80, 0, 10, 10], "area": 100, "iscrowd": 0},
                             {"id": 4, "image_id": 3, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}]}
    truth_file = tmp_path / "truth.json"
    write_json(truth_file, truth)
    rows, unnamed = pseudo_label_quality(file, truth_file)
    by_name = {row.name: row for row in rows}
    assert (by_name["hexagon"].precision, by_name["hexagon"].recall, by_name["hexagon"].novel) == (1.0, 1.0, True)
    # Two circle pseudo-boxes, one right; two true circles, one found. Image 3, left out, misses its star.
    assert (by_name["circle"].precision, by_name["circle"].recall) == (0.5, 0.5)
    assert (by_name["star"].pseudo_boxes, by_name["star"].recall) == (0, 0.0)
    assert unnamed == 0


# --- a round end to end --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tiny_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    tiny_run.run("fit", tiny_demo, out, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                 *tiny_run.checkpoint_every(out, 2))
    return next(out.rglob("last.ckpt"))


@pytest.mark.slow
def test_a_round_pseudo_labels_self_trains_and_fine_tunes_from_the_pretrain_checkpoint(tiny_demo, tmp_path, pretrained,
                                                                                      monkeypatch):
    monkeypatch.chdir(REPO)  # the recipes' paths are relative to the repository, as `make` runs it
    detector_runs = tmp_path / "detector"
    detector_runs.mkdir()
    tiny_run.run("fit", tiny_demo, detector_runs, f"--model.init_from={pretrained}", "--trainer.max_steps=2",
                 "--trainer.val_check_interval=2", *tiny_run.checkpoint_every(detector_runs, 2), config=RECIPE)
    detector = next(detector_runs.rglob("last.ckpt"))
    # To every run of the round: the tiny model and data, two steps, and thresholds that keep every
    # box of the untrained detector (OWL-ST's would keep none of it).
    common = [*tiny_run.TINY_MODEL, *tiny_run.data_arguments(tiny_demo, joint=False), "--trainer.precision=32-true",
              "--trainer.enable_progress_bar=false", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
              "--model.pseudo_labels.image_threshold=0.0", "--model.pseudo_labels.box_threshold=0.0",
              "--model.max_detections=10", *tiny_run.checkpoint_every(tmp_path, 2)]
    runs = tmp_path / "selftrain"
    check = ("annotations/captions_val.json", "images/val", tiny_demo / "annotations/instances_val.json")
    final = self_train(pretrained, detector, rounds=1, runs=runs, captions="annotations/captions_train.json",
                       images="images/train", check=check, extra=common)
    round_ = runs / "round1"
    labels = json.loads((round_ / "pseudo_labels/version_0/pseudo_labels.json").read_text())
    # Thresholds of 0 keep every image: each has boxes named by its own captions' queries.
    captions = json.loads((tiny_demo / "annotations/captions_train.json").read_text())
    assert len(labels["images"]) == len(captions["images"]) and labels["annotations"]
    names = {c["id"]: c["name"] for c in labels["categories"]}
    texts = {}
    for annotation in captions["annotations"]:
        texts.setdefault(annotation["image_id"], []).append(annotation["caption"])
    for annotation in labels["annotations"][:20]:
        assert names[annotation["category_id"]] in image_queries(texts[annotation["image_id"]])
    assert list((round_ / "pseudo_labels/version_0/predictions").glob("*.png"))  # a few images drawn with their labels
    assert "| **novel classes** |" in (round_ / "pseudo_label_quality.md").read_text()
    # The student trained on the pseudo-boxes' classes, from the pretrain weights; then on the human boxes.
    selftrain = tiny_run.scalars(round_ / "selftrain/version_0")
    assert "train/detection/focal" in selftrain and "val/detection/AP" in selftrain
    assert final == round_ / "finetune/version_0/checkpoints/last.ckpt" and final.exists()
    for run in ("pseudo_labels", "pseudo_label_check", "selftrain", "finetune"):
        assert (round_ / run / "done").exists()
    # Run again, nothing is redone.
    before = final.stat().st_mtime
    self_train(pretrained, detector, 1, runs, "annotations/captions_train.json", "images/train", check, common)
    assert final.stat().st_mtime == before


# --- prompts in training -------------------------------------------------------------------------

def detection_task(templates: list[str], train_prompts: str):
    """A detection task on a tiny random model, with a tokenizer of its prompts."""
    from mammut.data.tokenizer import CaptionTokenizer
    from mammut.model import GenerationConfig, Mammut, MammutConfig
    from mammut.task import TaskContext
    from mammut.tasks.detection import DetectionInputs, DetectionTask

    tokenizer = CaptionTokenizer.train([t.format(n) for t in templates for n in ("circle", "square")] * 4, vocab_size=300)
    config = MammutConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_width=32,
                          text_depth=1, text_heads=2, cross_attention_layers=[0], embed_dim=32,
                          vocab_size=tokenizer.vocab_size, context_length=8)
    torch.manual_seed(0)
    model = Mammut(config)
    task = DetectionTask(templates=templates, train_prompts=train_prompts)
    task.build(config)
    task.connect(TaskContext(config, GenerationConfig(), DetectionInputs((3, 32, 32)), tokenizer))
    return task, model, tokenizer


def test_random_training_prompts_put_each_class_in_one_template_drawn_per_step():
    from mammut.tasks.detection import DetectionTask

    templates = ["a {}", "a small {}", "a photo of a {}"]
    task, model, tokenizer = detection_task(templates, "random")
    model.eval()
    names = ["circle", "square"]
    with torch.no_grad():
        single = {(name, t): torch.nn.functional.normalize(
            model.text_embedding(tokenizer.encode_batch([t.format(name)], 8)), dim=-1)[0]
            for name in names for t in templates}
        seen = set()
        for _ in range(12):
            queries = task.queries(model, names, random_template=True)
            for name, query in zip(names, queries):
                match = [t for t in templates if torch.allclose(query, single[(name, t)], atol=1e-5)]
                assert len(match) == 1
                seen.add(match[0])
        assert seen == set(templates)  # every phrasing is met
        mean = task.queries(model, names)  # evaluation: the templates' mean
        expected = torch.nn.functional.normalize(torch.stack([single[("circle", t)] for t in templates]).mean(0), dim=-1)
        assert torch.allclose(mean[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="train_prompts"):
        DetectionTask(train_prompts="sometimes")


def test_training_queries_are_computed_once_while_the_text_side_is_frozen_and_each_step_otherwise():
    task, model, _ = detection_task(["a {}", "a small {}"], "mean")
    names = ["circle", "square"]
    for p in [*model.decoder.parameters(), *model.text_projection.parameters()]:
        p.requires_grad_(False)
    first = task.training_queries(model, names)
    assert task.training_queries(model, names) is first and not first.requires_grad
    assert torch.allclose(first, task.queries(model, names))
    assert task.training_queries(model, names[::-1]) is not first  # other classes: computed again
    for p in model.text_projection.parameters():
        p.requires_grad_(True)  # the text side trains: every step's queries carry its gradient
    trained = task.training_queries(model, names)
    assert trained.requires_grad and task.training_queries(model, names) is not trained
