"""The detection data side on real files: the COCO and LVIS readers, the transforms that move
boxes with the pixels, the dataset's samples and their batches."""

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mammut.data import (
    BadSampleError,
    DataFormatError,
    DetectionBatch,
    DetectionDataset,
    DetectionTransform,
    collate_detection,
    image_transform,
    read_instances,
)
from mammut.data.transforms import denormalize

FIXTURES = Path(__file__).parent / "fixtures" / "detection"
COCO = FIXTURES / "instances_val2017.json"
LVIS = FIXTURES / "lvis_v1_val.json"


def coco():
    return read_instances(COCO, FIXTURES / "val2017")


def lvis():
    return read_instances(LVIS, FIXTURES)


# ---------------------------------------------------------------------- reader


def test_reads_coco_instances_with_crowds_apart_and_negative_images_kept():
    instances = coco()
    assert instances.skipped == 0 and instances.file == COCO
    assert [(c.id, c.name, c.synonyms, c.frequency) for c in instances.categories] == [
        (1, "person", (), None), (3, "car", (), None), (18, "dog", (), None)]
    assert [r.image_id for r in instances.records] == [139, 285, 632]
    first, second, empty = instances.records
    assert first.path == FIXTURES / "val2017" / "000000000139.jpg" and first.path.is_file()
    assert (first.width, first.height) == (48, 32)
    # In annotation-id order: the dog (1701) before the person (1702); the RLE crowd apart.
    assert first.boxes == ((20.0, 10.0, 15.5, 12.0), (2.5, 3.0, 10.25, 20.5)) and first.category_ids == (18, 1)
    assert first.crowd_boxes == ((4.0, 8.0, 8.0, 8.0),)
    assert second.boxes == ((5.0, 5.0, 20.0, 10.0),) and second.crowd_boxes == ((22.0, 24.0, 14.0, 12.0),)
    assert empty.boxes == () and empty.category_ids == () and empty.crowd_boxes == ()
    assert all(r.neg_category_ids is None and r.not_exhaustive_category_ids == () for r in instances.records)


def test_reads_lvis_v1_with_paths_from_coco_urls_and_federated_fields():
    instances = lvis()
    assert instances.skipped == 0
    by_id = {c.id: c for c in instances.categories}
    assert [c.id for c in instances.categories] == [1, 3, 7, 9]
    assert by_id[1].frequency == "c" and by_id[1].synonyms == ("aerosol_can", "spray_can")
    assert by_id[3].frequency == "r" and by_id[9].frequency == "f" and by_id[9].name == "person"
    records = {r.image_id: r for r in instances.records}
    assert list(records) == [9, 139, 285]
    assert records[9].path == FIXTURES / "train2017" / "000000000009.jpg" and records[9].path.is_file()
    assert records[139].path == FIXTURES / "val2017" / "000000000139.jpg"
    assert records[9].neg_category_ids == (7, 9) and records[9].not_exhaustive_category_ids == ()
    assert records[139].neg_category_ids == (3,) and records[139].not_exhaustive_category_ids == (9,)
    assert records[139].category_ids == (9, 7, 9) and records[139].crowd_boxes == ()
    assert records[285].boxes == () and records[285].neg_category_ids == (1, 3)


def write(tmp_path, document, name="instances.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def edited(source, edit):
    document = json.loads(source.read_text())
    edit(document)
    return document


def set_key(section, position, key, value):
    return lambda document: document[section][position].__setitem__(key, value)


def drop_key(section, position, key):
    return lambda document: document[section][position].pop(key)


@pytest.mark.parametrize("source, edit, message", [
    (COCO, set_key("annotations", 0, "category_id", 99),
     r"annotations\[0\] \(annotation id 1702\): refers to category id 99, which is not in 'categories'"),
    (COCO, set_key("annotations", 0, "image_id", 5),
     r"annotations\[0\] \(annotation id 1702\): refers to image id 5, which is not in 'images'"),
    (COCO, lambda d: d["images"].append(copy.deepcopy(d["images"][1])), r"images\[3\]: duplicate image id 139"),
    (COCO, lambda d: d["categories"].append({"id": 3, "name": "auto"}), "duplicate category id 3"),
    (COCO, drop_key("annotations", 1, "bbox"), r"annotation id 1701\): missing key 'bbox'"),
    (COCO, set_key("images", 0, "id", "632"), r"images\[0\]: 'id' must be int"),
    (COCO, set_key("annotations", 2, "iscrowd", 2), "'iscrowd' must be 0 or 1"),
    (LVIS, lambda d: d["images"][0]["neg_category_ids"].append(99),
     "image id 139: 'neg_category_ids' names category id 99, which is not in 'categories'"),
    (LVIS, set_key("images", 1, "not_exhaustive_category_ids", [2]),
     "image id 285: 'not_exhaustive_category_ids' names category id 2"),
    (LVIS, set_key("categories", 0, "frequency", "x"), "'frequency' must be one of"),
])
def test_malformed_files_name_the_file_and_record(tmp_path, source, edit, message):
    path = write(tmp_path, edited(source, edit))
    with pytest.raises(DataFormatError, match=f"instances.json: .*{message}"):
        read_instances(path, tmp_path)
    with pytest.raises(DataFormatError, match=message):  # not a bad sample: skipping does not hide it
        read_instances(path, tmp_path, skip_bad_samples=True)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [')
    with pytest.raises(DataFormatError, match="instances.json: invalid JSON"):
        read_instances(path, tmp_path)


@pytest.mark.parametrize("bbox", [[2.5, 3.0, 10.25], [2.5, 3.0, 0, 20.5], [2.5, 3.0, -10.25, 20.5],
                                  [2.5, "3", 10.25, 20.5], [2.5, 3.0, float("nan"), 20.5], "2.5 3 10 20"])
def test_a_bad_box_fails_or_is_skipped_and_counted(tmp_path, bbox):
    path = write(tmp_path, edited(COCO, set_key("annotations", 0, "bbox", bbox)))
    with pytest.raises(DataFormatError, match=r"instances.json: annotation id 1702 \(image id 139\): bbox"):
        read_instances(path, tmp_path)
    instances = read_instances(path, tmp_path, skip_bad_samples=True)
    assert instances.skipped == 1
    assert instances.records[0].category_ids == (18,) and len(instances.records) == 3


@pytest.mark.parametrize("bbox", [[100, 100, 10, 10], [40, 10, 20, 10], [-5, 3, 10, 10]])
def test_a_box_outside_its_image_fails_or_is_skipped_naming_file_and_annotation(tmp_path, bbox, caplog):
    path = write(tmp_path, edited(COCO, set_key("annotations", 0, "bbox", bbox)))  # image 139 is 48x32
    with pytest.raises(DataFormatError, match=r"instances.json: annotation id 1702 \(image id 139\): bbox "
                                              r".* reaches outside its 48x32 image"):
        read_instances(path, tmp_path)
    instances = read_instances(path, tmp_path, skip_bad_samples=True)
    assert instances.skipped == 1 and instances.records[0].category_ids == (18,)
    assert any("instances.json: annotation id 1702" in r.getMessage() for r in caplog.records)


def test_a_box_past_the_edge_by_rounding_is_kept_as_it_is(tmp_path):
    path = write(tmp_path, edited(COCO, set_key("annotations", 0, "bbox", [-0.5, 3.0, 48.9, 29.5])))
    assert read_instances(path, tmp_path).records[0].boxes[1] == (-0.5, 3.0, 48.9, 29.5)


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_split_refuses_an_out_of_image_box_before_training(tiny_demo, tmp_path, split):
    from mammut.tasks.detection import DetectionDataModule
    document = json.loads((tiny_demo / f"annotations/instances_{split}.json").read_text())
    annotation = document["annotations"][0]
    annotation["bbox"] = [100, 100, 10, 10]  # on a 64x64 image
    path = write(tmp_path, document, f"instances_{split}.json")
    data = DetectionDataModule(root=str(tiny_demo), num_workers=0, **{f"{split}_annotations": str(path)})
    with pytest.raises(DataFormatError, match=rf"instances_{split}.json: annotation id {annotation['id']} "
                                              rf"\(image id {annotation['image_id']}\): bbox \[100, 100, 10, 10\] reaches outside"):
        data.setup("fit")


@pytest.mark.parametrize("missing", ["neg_category_ids", "not_exhaustive_category_ids"])
def test_an_lvis_image_without_federated_fields_is_refused_when_read(tmp_path, missing):
    path = write(tmp_path, edited(LVIS, drop_key("images", 1, missing)))  # image 285
    with pytest.raises(DataFormatError, match=rf"instances.json: images\[1\] \(image id 285\): no '{missing}'"):
        read_instances(path, tmp_path, skip_bad_samples=True)
    path = write(tmp_path, edited(LVIS, drop_key("categories", 2, "frequency")))
    with pytest.raises(DataFormatError, match=r"instances.json: category id \d+ has no 'frequency'"):
        read_instances(path, tmp_path)


def test_a_val_file_with_an_image_lacking_neg_category_ids_fails_before_training(tiny_demo, tmp_path):
    from mammut.tasks.detection import DetectionDataModule
    document = json.loads((tiny_demo / "annotations/instances_val.json").read_text())
    image_id = document["images"][3].pop("neg_category_ids") and document["images"][3]["id"]
    path = write(tmp_path, document, "instances_val.json")
    data = DetectionDataModule(root=str(tiny_demo), num_workers=0, val_annotations=str(path))
    with pytest.raises(DataFormatError, match=rf"instances_val.json: images\[3\] \(image id {image_id}\): "
                                              "no 'neg_category_ids'"):
        data.setup("fit")


def test_an_image_without_a_file_fails_or_is_skipped_with_its_annotations(tmp_path):
    def no_file(document):
        del document["images"][2]["file_name"], document["images"][2]["coco_url"]
    path = write(tmp_path, edited(COCO, no_file))
    with pytest.raises(DataFormatError, match="instances.json: image id 285: neither 'file_name' nor 'coco_url'"):
        read_instances(path, tmp_path)
    instances = read_instances(path, tmp_path, skip_bad_samples=True)
    assert [r.image_id for r in instances.records] == [139, 632] and instances.skipped == 1


# ---------------------------------------------------------------------- box transforms

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def scene(width, height, rectangles, seed=0):
    """Noise with channels in [80, 176] (never close to a pure colour) under filled rectangles
    (colour, (x0, y0, x1, y1)) given by their pixel edges."""
    noise = np.random.default_rng(seed).integers(80, 177, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    for colour, (x0, y0, x1, y1) in rectangles:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    return image


def xywh(rectangles):
    return torch.tensor([[x0, y0, x1 - x0, y1 - y0] for _, (x0, y0, x1, y1) in rectangles], dtype=torch.float32)


def colour_extent(image, colour):
    """(x0, y0, x1, y1) output pixels of the pixels close to ``colour``, or None if there are none."""
    pixels = denormalize(image[None])[0].permute(1, 2, 0) * 255
    mask = ((pixels - torch.tensor(colour, dtype=torch.float32)).abs() <= 50).all(-1)
    if not mask.any():
        return None
    rows, columns = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return mask, (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)


def corners(box, size):
    cx, cy, w, h = (float(v) * size for v in box)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def assert_box_on_its_rectangle(image, box, colour, size):
    """The box is where the pixels of ``colour`` are, within 1.5 output pixels, and its inside
    (2 pixels in from its edges) is all of that colour."""
    found = colour_extent(image, colour)
    assert found is not None, f"no {colour} pixels where the box {box.tolist()} is"
    mask, extent = found
    expected = corners(box, size)
    assert max(abs(a - b) for a, b in zip(extent, expected)) <= 1.5, (extent, expected)
    x0, y0, x1, y1 = (round(v) for v in expected)
    inside = mask[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    assert inside.numel() == 0 or inside.all()


def assert_fractions(boxed):
    for boxes in (boxed.boxes, boxed.crowd_boxes):
        x0, y0, x1, y1 = (boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                          boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2)
        for edge in (x0, y0, x1, y1):
            assert ((edge >= -1e-6) & (edge <= 1 + 1e-6)).all()


TWO_OBJECTS = [(RED, (8, 10, 30, 40)), (BLUE, (60, 30, 88, 56))]
CROWD = [(GREEN, (40, 4, 56, 20))]


def test_evaluation_squashes_the_whole_image_like_image_transform_and_scales_boxes():
    image = scene(96, 64, TWO_OBJECTS + CROWD)
    transform = DetectionTransform(64, train=False)
    rng = random.Random(0)
    state = rng.getstate()
    boxed = transform(image, xywh(TWO_OBJECTS), xywh(CROWD), rng)

    assert rng.getstate() == state  # nothing random
    assert torch.equal(boxed.image, image_transform(64, train=False)(image))
    expected = torch.tensor([[19 / 96, 25 / 64, 22 / 96, 30 / 64], [74 / 96, 43 / 64, 28 / 96, 26 / 64]])
    assert torch.allclose(boxed.boxes, expected) and boxed.keep.tolist() == [True, True] and boxed.boxes_dropped == 0
    assert torch.allclose(boxed.crowd_boxes, torch.tensor([[48 / 96, 12 / 64, 16 / 96, 16 / 64]]))
    for box, (colour, _) in zip(boxed.boxes, TWO_OBJECTS):
        assert_box_on_its_rectangle(boxed.image, box, colour, 64)
    assert_box_on_its_rectangle(boxed.image, boxed.crowd_boxes[0], GREEN, 64)


def test_evaluation_clips_to_the_image_and_keeps_tiny_boxes():
    transform = DetectionTransform(50, train=False)
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0], [190.0, 90.0, 20.0, 20.0], [5.0, 5.0, 1.0, 1.0],
                          [210.0, 10.0, 5.0, 5.0]])
    boxed = transform(Image.new("RGB", (200, 100)), boxes, torch.zeros(0, 4), random.Random(0))
    expected = torch.tensor([[0.2, 0.25, 0.2, 0.3], [0.975, 0.95, 0.05, 0.1], [0.0275, 0.055, 0.005, 0.01]])
    assert torch.allclose(boxed.boxes, expected)
    assert boxed.keep.tolist() == [True, True, True, False] and boxed.boxes_dropped == 1  # wholly outside


@pytest.mark.parametrize("seed", range(8))
def test_training_boxes_follow_their_objects_through_flip_and_scale_jitter(seed):
    image = scene(96, 64, TWO_OBJECTS + CROWD, seed)
    boxed = DetectionTransform(64, train=True)(image, xywh(TWO_OBJECTS), xywh(CROWD), random.Random(seed))

    assert boxed.image.shape == (3, 64, 64)
    assert_fractions(boxed)
    kept = [colour for (colour, _), keep in zip(TWO_OBJECTS, boxed.keep) if keep]
    assert len(boxed.boxes) == len(kept) and boxed.boxes_dropped == 2 - len(kept)
    for box, colour in zip(boxed.boxes, kept):
        assert_box_on_its_rectangle(boxed.image, box, colour, 64)
    for crowd in boxed.crowd_boxes:
        assert_box_on_its_rectangle(boxed.image, crowd, GREEN, 64)


def test_a_flip_moves_a_left_object_to_the_right():
    image = scene(96, 64, TWO_OBJECTS)
    transform = DetectionTransform(64, train=True, scale_range=(1.0, 1.0))
    centres = set()
    for seed in range(12):
        boxed = transform(image, xywh(TWO_OBJECTS), torch.zeros(0, 4), random.Random(seed))
        red, blue = boxed.boxes
        assert_box_on_its_rectangle(boxed.image, red, RED, 64)
        assert_box_on_its_rectangle(boxed.image, blue, BLUE, 64)
        assert torch.allclose(red[2:], torch.tensor([22 / 96, 30 / 64]))  # no crop: the size is kept
        centres.add(round(float(red[0]), 4))
    assert centres == {round(19 / 96, 4), round(1 - 19 / 96, 4)}


def test_scale_jitter_clips_boxes_to_the_crop_and_drops_and_counts_those_outside_it():
    # A crop of half of each side: the middle square is always cut somewhere or whole, the corner
    # square usually left out, and a box of the whole image always clipped to the whole crop.
    objects = [(RED, (40, 40, 70, 70)), (BLUE, (0, 0, 12, 12))]
    whole = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    transform = DetectionTransform(64, train=True, flip=False, scale_range=(0.5, 0.5), min_box_size=4)
    clipped = dropped = 0
    for seed in range(16):
        image = scene(100, 100, objects, seed)
        boxed = transform(image, torch.cat([xywh(objects), whole]), torch.zeros(0, 4), random.Random(seed))
        assert_fractions(boxed)
        assert boxed.keep[0] and boxed.keep[2] and boxed.boxes_dropped == int((~boxed.keep).sum())
        assert torch.allclose(boxed.boxes[-1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
        assert_box_on_its_rectangle(boxed.image, boxed.boxes[0], RED, 64)
        clipped += bool((boxed.boxes[0, 2:] < 30 / 50 - 1e-4).any())
        if boxed.keep[1]:
            assert_box_on_its_rectangle(boxed.image, boxed.boxes[1], BLUE, 64)
        else:
            dropped += 1
            found = colour_extent(boxed.image, BLUE)  # none of it shows, or a sliver under 4 pixels
            assert found is None or min(found[1][2] - found[1][0], found[1][3] - found[1][1]) < 4 + 1.5
    assert clipped and dropped


def test_training_draws_come_from_the_given_rng_alone():
    image = scene(96, 64, TWO_OBJECTS + CROWD)
    transform = DetectionTransform(64, train=True)
    first, again = (transform(image, xywh(TWO_OBJECTS), xywh(CROWD), random.Random(5)) for _ in range(2))
    assert torch.equal(first.image, again.image) and torch.equal(first.boxes, again.boxes)
    others = [transform(image, xywh(TWO_OBJECTS), xywh(CROWD), random.Random(s)).boxes for s in range(6, 10)]
    assert any(not torch.equal(first.boxes, other) for other in others)


# ---------------------------------------------------------------------- dataset and batches


def dataset(instances, train=False, size=32, **kwargs):
    transform = DetectionTransform(size, train=train, **{k: kwargs.pop(k) for k in list(kwargs)
                                                         if k in ("scale_range", "flip", "min_box_size")})
    return DetectionDataset(instances.records, instances.categories, transform, train=train, **kwargs)


def test_coco_samples_know_every_category_and_label_by_index():
    data = dataset(coco())
    sample = data[0]
    assert sample.image_id == 139 and sample.image_size == (32, 48) and sample.image.shape == (3, 32, 32)
    assert sample.labels.tolist() == [2, 0]  # dog (id 18), person (id 1) among ids [1, 3, 18]
    assert torch.allclose(sample.boxes[0], torch.tensor([27.75 / 48, 16 / 32, 15.5 / 48, 12 / 32]))
    assert torch.allclose(sample.crowd_boxes, torch.tensor([[8 / 48, 12 / 32, 8 / 48, 8 / 32]]))
    assert all(data[i].known_categories.tolist() == [True] * 3 for i in range(len(data)))
    assert data[2].labels.tolist() == [] and data[2].boxes.shape == (0, 4)


def test_lvis_samples_know_only_the_categories_looked_for():
    data = dataset(lvis())
    # Categories [aerosol_can 1, armadillo 3, dog 7, person 9].
    known = {data[i].image_id: data[i].known_categories.tolist() for i in range(len(data))}
    assert known == {
        9: [True, False, True, True],  # an aerosol can; dog and person verified absent
        139: [False, True, True, False],  # dog boxed, armadillo absent; person boxed but not exhaustively
        285: [True, True, False, False],  # no boxes; aerosol can and armadillo verified absent
    }
    assert data[1].labels.tolist() == [3, 2, 3]


def test_labels_follow_the_boxes_that_survive():
    data = dataset(lvis(), train=True, scale_range=(1.0, 1.0), flip=False, min_box_size=5)
    sample = data[1]  # image 139 at 32 pixels: its first box, a person, is 3.3 pixels wide
    assert sample.labels.tolist() == [2, 3] and sample.boxes.shape == (2, 4) and sample.boxes_dropped == 1
    assert torch.allclose(sample.boxes[0], torch.tensor([27.75 / 48, 16 / 32, 15.5 / 48, 12 / 32]))  # the dog


def test_a_bad_image_fails_naming_the_file_or_is_skipped_and_counted(tmp_path):
    data = dataset(coco())
    record = data.records[0]
    data.records[0] = type(record)(**{**record.__dict__, "path": tmp_path / "missing.jpg"})
    with pytest.raises(BadSampleError, match="missing.jpg: image file not found"):
        data[0]
    data.skip_bad_samples = True
    assert data[0] is None
    batch = collate_detection([data[0], data[1]])
    assert len(batch) == 1 and batch.num_skipped == 1 and batch.image_ids.tolist() == [285]


def test_an_image_of_another_size_than_annotated_is_a_bad_sample(tmp_path):
    Image.new("RGB", (32, 48)).save(tmp_path / "000000000139.jpg")  # 139 is annotated as 48x32
    data = dataset(read_instances(COCO, tmp_path))
    with pytest.raises(BadSampleError, match=r"000000000139.jpg: image is 32x48 pixels, but its annotations say 48x32"):
        data[0]
    data.skip_bad_samples = True
    assert data[0] is None


def test_records_with_categories_the_dataset_lacks_are_refused():
    instances = lvis()
    with pytest.raises(DataFormatError, match=r"image id 9 .*category ids \[1\]"):
        DetectionDataset(instances.records, instances.categories[1:], DetectionTransform(32, train=False), train=False)


def test_a_sample_is_the_same_for_the_same_seed_epoch_and_index():
    instances = lvis()
    data, twin = dataset(instances, train=True, seed=3), dataset(instances, train=True, seed=3)
    first = data[1]
    data.set_epoch(4)
    later = data[1]
    data.set_epoch(0)
    for again in (data[1], twin[1]):
        assert torch.equal(first.image, again.image) and torch.equal(first.boxes, again.boxes)
        assert torch.equal(first.labels, again.labels)
    twin.set_epoch(4)
    assert torch.equal(later.boxes, twin[1].boxes)
    epochs = []
    for epoch in range(1, 6):
        data.set_epoch(epoch)
        epochs.append(data[1].boxes)
    assert any(boxes.shape != first.boxes.shape or not torch.equal(boxes, first.boxes) for boxes in epochs)


def test_samples_collate_into_a_detection_batch():
    data = dataset(coco())
    batch = collate_detection([data[i] for i in range(3)])
    assert isinstance(batch, DetectionBatch) and len(batch) == 3 and batch.images.shape == (3, 3, 32, 32)
    assert [len(b) for b in batch.boxes] == [2, 1, 0] and [b.tolist() for b in batch.labels] == [[2, 0], [1], []]
    assert [len(c) for c in batch.crowd_boxes] == [1, 1, 0]
    assert batch.known_categories.shape == (3, 3) and batch.known_categories.dtype == torch.bool
    assert batch.image_ids.tolist() == [139, 285, 632]
    assert batch.image_sizes.tolist() == [[32, 48], [40, 40], [48, 32]]
    assert batch.num_skipped == 0 and batch.truncated == [] and batch.boxes_dropped == 0

    dropping = dataset(coco(), train=True, min_box_size=1000)
    batch = collate_detection([dropping[i] for i in range(3)])
    assert batch.boxes_dropped == 3 and all(len(labels) == 0 for labels in batch.labels)
    assert all(c.shape == (0, 4) for c in batch.crowd_boxes)  # crowds dropped too, but not counted


def test_an_all_bad_batch_is_empty_but_counted():
    for batch in (DetectionBatch.empty(3), collate_detection([None, None, None])):
        assert len(batch) == 0 and batch.num_skipped == 3 and batch.boxes_dropped == 0
        assert batch.boxes == [] and batch.labels == [] and batch.crowd_boxes == [] and batch.truncated == []
        assert batch.images.shape == (0, 3, 0, 0) and batch.image_ids.shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU")
def test_detection_batches_can_be_pinned_with_their_per_image_tensors():
    data = dataset(coco())
    batch = collate_detection([data[i] for i in range(3)]).pin_memory()
    assert batch.images.is_pinned() and batch.known_categories.is_pinned() and batch.image_sizes.is_pinned()
    assert all(t.is_pinned() for t in [*batch.boxes, *batch.labels, *batch.crowd_boxes])
    assert batch.truncated == []
