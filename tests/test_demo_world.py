"""The demo-world generator writes real files in public formats, deterministically.

Runs the generator at its tiny size (a fraction of a second) into temporary folders
and reads the files back as a dataset reader would.
"""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammut.data.demo import GENERATOR_VERSION, NOVEL_SHAPES, SHAPES, TINY_SIZES, generate
from mammut.data.demo.__main__ import main
from mammut.data.demo.captions import RELATION_WORDS
from mammut.data.demo.generate import PARALLEL_MIN_IMAGES
from mammut.data.demo.world import COLOURS

SPLITS = ("train", "val", "test")


def run_cli(out: Path, *extra: str) -> Path:
    assert main(["--out", str(out), "--tiny", *extra]) == 0
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def canonical_objects(canonical: str) -> list[str]:
    """The objects of a canonical description: "a; b | relations" -> ["a", "b"]."""
    return canonical.split(" | ")[0].split("; ")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return run_cli(tmp_path_factory.mktemp("demo") / "seed0", "--seed", "0")


def test_same_seed_gives_identical_files_and_other_seed_differs(world, tmp_path):
    again = all_files(run_cli(tmp_path / "again", "--seed", "0"))
    first = all_files(world)
    assert again.keys() == first.keys()
    assert [name for name in first if first[name] != again[name]] == []

    other = all_files(run_cli(tmp_path / "other", "--seed", "1"))
    assert other.keys() == first.keys()  # same layout, same ids
    assert other["annotations/captions_train.json"] != first["annotations/captions_train.json"]
    jpegs = [name for name in first if name.endswith(".jpg")]
    assert sum(first[name] != other[name] for name in jpegs) == len(jpegs)


def test_selecting_tasks_keeps_images_and_drops_other_files(world, tmp_path):
    only_captions = run_cli(tmp_path / "captions", "--seed", "0", "--tasks", "captions")
    assert not (only_captions / "vqa").exists()
    assert not list((only_captions / "annotations").glob("instances_*.json"))
    full, partial = all_files(world), all_files(only_captions)
    for name, data in partial.items():
        if name.endswith(".jpg") or name.startswith("annotations/captions_"):
            assert full[name] == data, name


@pytest.mark.parametrize("split", SPLITS)
def test_captions_are_five_per_image_unique_and_true(world, split):
    doc = read_json(world / "annotations" / f"captions_{split}.json")
    assert len(doc["images"]) == TINY_SIZES[split]
    per_image = Counter(a["image_id"] for a in doc["annotations"])
    assert set(per_image) == {im["id"] for im in doc["images"]}
    assert set(per_image.values()) == {5}
    captions = [a["caption"] for a in doc["annotations"]]
    assert len(set(captions)) == len(captions)
    assert len({a["id"] for a in doc["annotations"]}) == len(captions)

    # Every "colour shape" a caption names is an object of that image.
    canonical = {im["id"]: im["canonical"] for im in doc["images"]}
    mention = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")
    for a in doc["annotations"]:
        objects = {" ".join(o.split()[1:]) for o in canonical_objects(canonical[a["image_id"]])}
        named = {" ".join(m) for m in mention.findall(a["caption"])}
        assert named and named <= objects, (a["caption"], canonical[a["image_id"]])


@pytest.mark.parametrize("split", ("val", "test"))
def test_evaluation_splits_have_one_image_per_description(world, split):
    doc = read_json(world / "annotations" / f"captions_{split}.json")
    canonical = [im["canonical"] for im in doc["images"]]
    assert len(set(canonical)) == len(canonical)
    # Captions name every object in full, so each caption fits one image only.
    objects = {im["id"]: canonical_objects(im["canonical"]) for im in doc["images"]}
    for a in doc["annotations"]:
        assert len(re.findall(rf"\b({'|'.join(SHAPES)})\b", a["caption"])) == len(objects[a["image_id"]])
        sizes = re.findall(r"\b(small|little|tiny|large|big)\b", a["caption"])
        assert len(sizes) == len(objects[a["image_id"]]), a["caption"]


def test_info_records_version_seed_and_split(world):
    files = {
        split: [
            world / "annotations" / f"captions_{split}.json",
            world / "annotations" / f"instances_{split}.json",
            world / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json",
            world / "vqa" / f"v2_mscoco_{split}_annotations.json",
        ]
        for split in SPLITS
    }
    for split, paths in files.items():
        for path in paths:
            info = read_json(path)["info"]
            assert (info["generator_version"], info["seed"], info["split"]) == (GENERATOR_VERSION, 0, split)
    assert read_json(world / "manifest.json")["sizes"] == TINY_SIZES


def test_images_decode_at_the_requested_size(world, tmp_path):
    for split in SPLITS:
        doc = read_json(world / "annotations" / f"captions_{split}.json")
        for im in doc["images"]:
            with Image.open(world / "images" / split / im["file_name"]) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        assert len(list((world / "images" / split).iterdir())) == len(doc["images"])

    big = tmp_path / "big"
    generate(big, seed=0, sizes={"train": 2, "val": 2, "test": 2}, image_size=96, tasks=("captions", "detection"))
    for path in big.glob("images/*/*.jpg"):
        with Image.open(path) as image:
            assert image.size == (96, 96)
    boxes = [a["bbox"] for a in read_json(big / "annotations" / "instances_val.json")["annotations"]]
    assert max(w for _, _, w, _ in boxes) > 64 * 0.33  # sizes scale with the image


def test_vqa_has_ten_answers_and_all_question_types(world):
    expected_answer_type = {
        "colour": "other", "shape": "other", "count": "number", "existence": "yes/no", "relation": "other",
    }
    for split in SPLITS:
        questions = read_json(world / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json")["questions"]
        annotations = read_json(world / "vqa" / f"v2_mscoco_{split}_annotations.json")["annotations"]
        assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
        assert len({q["question_id"] for q in questions}) == len(questions)
        assert {a["question_type"] for a in annotations} == set(expected_answer_type)
        for a in annotations:
            assert a["answer_type"] == expected_answer_type[a["question_type"]]
            answers = a["answers"]
            assert [x["answer_id"] for x in answers] == list(range(1, 11))
            texts = Counter(x["answer"] for x in answers)
            majority = a["multiple_choice_answer"]
            assert texts[majority] > max((n for t, n in texts.items() if t != majority), default=0)
    # Noise is there: some answers differ from the majority, including surface variants.
    all_answers = [x["answer"] for a in annotations for x in a["answers"]]
    assert any(t in all_answers for t in ("one", "two", "three", "Yes", "No"))
    assert sum(x["answer"] != a["multiple_choice_answer"] for a in annotations for x in a["answers"]) > 0


def relation_between(a: dict, b: dict) -> str:
    """Where box `a` is relative to box `b`, along the dominant axis of their centres."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def test_vqa_answers_agree_with_the_scene(world):
    instances = read_json(world / "annotations" / "instances_val.json")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    objects: dict[int, list[dict]] = {}
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        obj = {"size": a["size"], "colour": a["colour"], "shape": names[a["category_id"]]}
        objects.setdefault(a["image_id"], []).append({**obj, "cx": x + w / 2, "cy": y + h / 2})
    relation_of_phrase = {phrase: rel for rel, phrases in RELATION_WORDS.items() for phrase in phrases}
    questions = read_json(world / "vqa" / "v2_OpenEnded_mscoco_val_questions.json")["questions"]
    annotations = read_json(world / "vqa" / "v2_mscoco_val_annotations.json")["annotations"]
    checked = Counter()
    for q, a in zip(questions, annotations):
        scene, answer = objects[q["image_id"]], a["multiple_choice_answer"]
        if q["question"] in ("how many shapes are there?", "how many objects are there?"):
            assert answer == str(len(scene))
            checked["count"] += 1
        colour_of = re.fullmatch(rf"what color is the ({'|'.join(SHAPES)})\?", q["question"])
        if colour_of:
            assert [o["colour"] for o in scene if o["shape"] == colour_of[1]] == [answer]
            checked["colour"] += 1
        if a["question_type"] == "relation":
            asked = re.fullmatch(r"(?:what is|what shape is|which shape is) (.+) the (.+)\?", q["question"])
            phrase, reference = asked.groups()
            words = set(reference.split())
            anchors = [o for o in scene if words <= {o["size"], o["colour"], o["shape"]}]
            assert len(anchors) == 1, q
            wanted = relation_of_phrase[phrase]
            related = [o for o in scene if o is not anchors[0] and relation_between(o, anchors[0]) == wanted]
            assert [o["shape"] for o in related] == [answer], q
            checked["relation"] += 1
    assert set(checked) == {"count", "colour", "relation"}


def test_novel_classes_are_rare_and_unboxed_only_in_train(world):
    train = read_json(world / "annotations" / "instances_train.json")
    val = read_json(world / "annotations" / "instances_val.json")
    frequency = {c["name"]: c["frequency"] for c in train["categories"]}
    assert frequency == {s: ("r" if s in NOVEL_SHAPES else "f") for s in SHAPES}
    novel_ids = {c["id"] for c in train["categories"] if c["name"] in NOVEL_SHAPES}
    assert not {a["category_id"] for a in train["annotations"]} & novel_ids
    assert {a["category_id"] for a in val["annotations"]} & novel_ids
    # Novel shapes are still drawn and captioned in train.
    captions = read_json(world / "annotations" / "captions_train.json")["annotations"]
    assert any(s in c["caption"] for c in captions for s in NOVEL_SHAPES)


def test_evaluation_boxes_cover_every_object(world):
    for split in ("val", "test"):
        captions = read_json(world / "annotations" / f"captions_{split}.json")
        instances = read_json(world / "annotations" / f"instances_{split}.json")
        boxes = Counter(a["image_id"] for a in instances["annotations"])
        for im in captions["images"]:
            assert boxes[im["id"]] == len(canonical_objects(im["canonical"]))


def test_boxes_lie_inside_the_image_and_on_the_drawn_objects(world):
    instances = read_json(world / "annotations" / "instances_val.json")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    by_image: dict[int, list[dict]] = {}
    for a in instances["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    checked = 0
    for im in instances["images"]:
        pixels = np.asarray(Image.open(world / "images" / "val" / im["file_name"]).convert("RGB"), dtype=float)
        outside = np.ones(pixels.shape[:2], dtype=bool)
        for a in by_image[im["id"]]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
            assert a["iscrowd"] == 0 and 0 < a["area"] <= (w + 0.01) * (h + 0.01)  # rounded to 0.01
            outside[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = False
        background = np.median(pixels[outside], axis=0)
        for a in by_image[im["id"]]:
            if names[a["category_id"]] not in ("circle", "square"):
                continue
            x, y, w, h = a["bbox"]
            colour = np.asarray(COLOURS[a["colour"]])
            centre = pixels[int(y + h / 2), int(x + w / 2)]
            assert np.abs(centre - colour).max() < 40, a
            assert np.abs(centre - background).sum() > 100, a
            # The box is tight: pixels wholly inside each edge show the object, pixels
            # wholly outside it do not.
            middle_x, middle_y = int(x + w / 2), int(y + h / 2)
            inside = [
                (middle_y, int(x + 1.5)), (middle_y, int(x + w - 1.5)),
                (int(y + 1.5), middle_x), (int(y + h - 1.5), middle_x),
            ]
            outside = [
                (middle_y, int(x - 1.5)), (middle_y, int(x + w + 1.5)),
                (int(y - 1.5), middle_x), (int(y + h + 1.5), middle_x),
            ]
            for row, column in inside:
                assert np.abs(pixels[row, column] - colour).max() < 40, (a, row, column)
            for row, column in outside:
                if 0 <= row < im["height"] and 0 <= column < im["width"]:
                    assert np.abs(pixels[row, column] - colour).max() > 60, (a, row, column)
            checked += 1
    assert checked > 0


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        generate(tmp_path, tiny=True, tasks=("captions", "segmentation"))
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, tiny=True, image_size=8)


def test_relations_in_canonical_descriptions_match_the_boxes(world):
    instances = read_json(world / "annotations" / "instances_val.json")
    captions = read_json(world / "annotations" / "captions_val.json")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    centres: dict[int, dict[str, tuple[float, float]]] = {}
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        description = f"{a['size']} {a['colour']} {names[a['category_id']]}"
        centres.setdefault(a["image_id"], {})[description] = (x + w / 2, y + h / 2)
    checked = 0
    for im in captions["images"]:
        if " | " not in im["canonical"] or len(centres[im["id"]]) != len(canonical_objects(im["canonical"])):
            continue  # single objects, or two identical objects that a name cannot tell apart
        for fact in im["canonical"].split(" | ")[1].split("; "):
            first, relation, second = re.fullmatch(r"(.+) (left of|above) (.+)", fact).groups()
            (ax, ay), (bx, by) = centres[im["id"]][first], centres[im["id"]][second]
            if relation == "left of":
                assert ax < bx and abs(ax - bx) > abs(ay - by), (im["canonical"], fact)
            else:
                assert ay < by and abs(ay - by) > abs(ax - bx), (im["canonical"], fact)
            checked += 1
    assert checked > 0


def test_parallel_rendering_gives_the_same_images(tmp_path):
    sizes = {"train": PARALLEL_MIN_IMAGES, "val": 0, "test": 0}  # just enough to start workers
    serial = generate(tmp_path / "serial", seed=3, sizes=sizes, tasks=("captions",), workers=1)
    parallel = generate(tmp_path / "parallel", seed=3, sizes=sizes, tasks=("captions",), workers=2)
    assert serial == parallel
    assert all_files(tmp_path / "serial") == all_files(tmp_path / "parallel")


def test_evaluation_images_never_share_their_objects(tmp_path):
    # 150 images make repeats likely (only 84 single-object scenes exist), so the
    # rule is exercised, not just met by chance.
    generate(tmp_path, seed=0, sizes={"train": 0, "val": 150, "test": 0}, tasks=("captions",))
    images = read_json(tmp_path / "annotations" / "captions_val.json")["images"]
    inventories = [tuple(canonical_objects(im["canonical"])) for im in images]
    assert len(set(inventories)) == len(inventories) == 150
