"""The Karpathy splits (dataset_coco.json, dataset_flickr30k.json): the reader on real files in
their schema, format detection, and `mammut test` with configs/retrieval_karpathy.yaml."""

from __future__ import annotations

import json
import logging

import pytest
from coco_files import CAPTIONS, coco_captions, write_coco

from mammut.data import CaptionRecord, DataFormatError, read_captions, read_karpathy_captions

from conftest import REPO
from tiny_run import run, scalars


def sentences(imgid: int, first_sentid: int, captions: list[str]) -> list[dict]:
    return [{"tokens": caption.lower().strip(" .").split(), "raw": caption, "imgid": imgid, "sentid": first_sentid + k}
            for k, caption in enumerate(captions)]


def karpathy_image(imgid: int, split: str, captions: list[str], cocoid: int | None = None) -> dict:
    """One image entry as Karpathy's files write it: COCO's carry filepath and cocoid, Flickr's neither."""
    image = {"filename": f"{imgid}.jpg", "imgid": imgid, "split": split}
    if cocoid is not None:
        folder = "train2014" if split == "train" else "val2014"
        image.update(filepath=folder, filename=f"COCO_{folder}_{cocoid:012d}.jpg", cocoid=cocoid)
    image["sentences"] = sentences(imgid, 10 * imgid, captions)
    image["sentids"] = [s["sentid"] for s in image["sentences"]]
    return image


def write_karpathy(path, images: list[dict], dataset: str = "coco"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "dataset": dataset}))
    return path


# COCO-style: cocoids out of order in the file, every split, restval among them.
COCO_IMAGES = [
    karpathy_image(0, "test", ["A man riding a horse.", "a horse and its rider"], cocoid=391895),
    karpathy_image(1, "restval", ["Two dogs play.", "dogs on grass"], cocoid=522418),
    karpathy_image(2, "train", ["A bowl of soup.", "soup  "], cocoid=184613),
    karpathy_image(3, "val", ["A red bus.", "bus on a street"], cocoid=318219),
    karpathy_image(4, "test", ["A cat on a mat.", "the cat sits"], cocoid=60623),
    karpathy_image(5, "train", ["Kites in the sky.", "people fly kites"], cocoid=9),
    karpathy_image(6, "restval", ["A plate of food.", "food"], cocoid=483108),
]


def test_each_split_reads_its_images_ordered_by_cocoid_and_train_includes_restval(tmp_path):
    file = write_karpathy(tmp_path / "dataset_coco.json", COCO_IMAGES)

    train, skipped = read_karpathy_captions(file, tmp_path / "coco", "train")
    val, _ = read_karpathy_captions(file, tmp_path / "coco", "val")
    test, _ = read_karpathy_captions(file, tmp_path / "coco", "test")

    assert skipped == 0
    assert [r.image_id for r in train] == [9, 184613, 483108, 522418]
    assert [r.image_id for r in val] == [318219]
    assert [r.image_id for r in test] == [60623, 391895]
    assert test[1] == CaptionRecord(391895, tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg",
                                    ("A man riding a horse.", "a horse and its rider"))
    assert train[0].path == tmp_path / "coco" / "train2014" / "COCO_train2014_000000000009.jpg"
    assert train[1].captions == ("A bowl of soup.", "soup")  # raw text, stripped


def test_flickr_style_images_without_filepath_or_cocoid_use_imgid_and_the_root(tmp_path):
    images = [karpathy_image(i, split, [f"caption {i}"]) for i, split in [(7, "test"), (3, "train"), (5, "test")]]
    file = write_karpathy(tmp_path / "dataset_flickr30k.json", images, dataset="flickr30k")

    records, skipped = read_karpathy_captions(file, tmp_path / "flickr30k-images", "test")

    assert skipped == 0
    assert records == [CaptionRecord(5, tmp_path / "flickr30k-images" / "5.jpg", ("caption 5",)),
                       CaptionRecord(7, tmp_path / "flickr30k-images" / "7.jpg", ("caption 7",))]


def _set(position, key, value):
    def edit(images):
        images[position][key] = value
        return images
    return edit


def _drop(position, key):
    def edit(images):
        del images[position][key]
        return images
    return edit


def _drop_raw(images):
    del images[4]["sentences"][1]["raw"]
    return images


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_drop(2, "filename"), ["images[2]", "image id 184613", "'filename'"]),
        (_drop(2, "imgid"), ["images[2]", "'imgid'"]),
        (_drop(5, "split"), ["images[5]", "image id 9", "'split'"]),
        (_drop(5, "sentences"), ["images[5]", "'sentences'"]),
        (_drop_raw, ["images[4]", "image id 60623", "sentences[1]", "'raw'"]),
        (_set(3, "cocoid", "318219"), ["images[3]", "'cocoid' must be int"]),
        (_set(3, "filepath", None), ["images[3]", "'filepath' must be str"]),
        (_set(1, "sentences", "Two dogs play."), ["images[1]", "'sentences' must be list"]),
        (_set(6, "split", "holdout"), ["images[6]", "image id 483108", "unknown split 'holdout'"]),
        (_set(6, "cocoid", 9), ["images[6]", "duplicate image id 9"]),
    ],
)
def test_malformed_records_name_the_file_and_record_whatever_split_is_read(tmp_path, edit, expected):
    """Records of the other splits are checked too: a broken file fails before any run."""
    file = write_karpathy(tmp_path / "dataset_coco.json", edit(json.loads(json.dumps(COCO_IMAGES))))

    with pytest.raises(DataFormatError) as error:
        read_karpathy_captions(file, tmp_path, "val")

    for text in [str(file), *expected]:
        assert text in str(error.value)


def test_not_a_split_of_the_karpathy_files_is_refused(tmp_path):
    file = write_karpathy(tmp_path / "dataset_coco.json", COCO_IMAGES)
    with pytest.raises(ValueError, match="restval"):
        read_karpathy_captions(file, tmp_path, "restval")


def test_empty_captions_and_images_left_without_captions_are_skipped_and_counted(tmp_path, caplog):
    images = [karpathy_image(0, "test", ["a cat", "  ", "the cat"], cocoid=1),
              karpathy_image(1, "test", ["\n"], cocoid=2),
              karpathy_image(2, "test", [], cocoid=3),
              karpathy_image(3, "train", [""], cocoid=4)]  # not in the split read: not counted
    file = write_karpathy(tmp_path / "dataset_coco.json", images)

    with pytest.raises(DataFormatError, match=r"image id 1\) sentences\[1\]: empty caption"):
        read_karpathy_captions(file, tmp_path, "test")
    with caplog.at_level(logging.WARNING):
        records, skipped = read_karpathy_captions(file, tmp_path, "test", skip_bad_samples=True)

    assert [(r.image_id, r.captions) for r in records] == [(1, ("a cat", "the cat"))]
    assert skipped == 4  # two empty captions, then two images with none left
    assert "image id 3" in caplog.text and "no captions" in caplog.text


def test_read_captions_tells_the_two_formats_apart(tmp_path):
    karpathy = write_karpathy(tmp_path / "dataset_coco.json", COCO_IMAGES)
    coco = write_coco(tmp_path / "captions_val2017.json", coco_captions(CAPTIONS))

    assert [r.image_id for r in read_captions(karpathy, tmp_path, "test")[0]] == [60623, 391895]
    assert [r.image_id for r in read_captions(coco, tmp_path, "test")[0]] == [1, 2, 3]
    assert read_captions(karpathy, tmp_path, "val", format="karpathy")[0][0].image_id == 318219
    with pytest.raises(DataFormatError, match="missing key 'annotations'"):
        read_captions(karpathy, tmp_path, "val", format="coco")
    with pytest.raises(ValueError, match="auto, coco, karpathy"):
        read_captions(coco, tmp_path, "val", format="flickr")


# ------------------------------------------------------------------ end to end
def demo_as_karpathy(demo, file, num_test: int):
    """The demo world's three COCO caption files as one dataset_coco.json: the first ``num_test``
    test images are the test split, the other test images and every second train image restval."""
    images = []
    for split in ("train", "val", "test"):
        document = json.loads((demo / "annotations" / f"captions_{split}.json").read_text())
        captions = {}
        for annotation in sorted(document["annotations"], key=lambda a: a["id"]):
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
        for position, image in enumerate(document["images"]):
            if split == "test":
                karpathy_split = "test" if position < num_test else "restval"
            else:
                karpathy_split = "restval" if split == "train" and position % 2 else split
            imgid = len(images)
            images.append({"filepath": split, "filename": image["file_name"], "imgid": imgid,
                           "split": karpathy_split, "cocoid": image["id"],
                           "sentences": sentences(imgid, 5 * imgid, captions[image["id"]])})
    return write_karpathy(file, images)


@pytest.mark.slow
def test_mammut_test_with_the_karpathy_recipe_evaluates_the_karpathy_test_split(tiny_demo, tmp_path, capsys):
    num_test = 10  # of the demo's 24 test images; its val split has 24 too
    file = demo_as_karpathy(tiny_demo, tmp_path / "karpathy" / "dataset_coco.json", num_test)
    run("fit", tiny_demo, tmp_path, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.version=run")
    last = tmp_path / "pretrain" / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()

    run("test", tiny_demo, tmp_path, "--config", str(REPO / "configs/retrieval_karpathy.yaml"),
        f"--data.root={tiny_demo}", f"--ckpt_path={last}", "--trainer.logger.init_args.version=test",
        *[f"--data.{split}_annotations={file}" for split in ("train", "val", "test")],
        *[f"--data.{split}_images=images" for split in ("train", "val", "test")])

    logged = scalars(tmp_path / "retrieval_karpathy" / "test")
    for tag in ("test/pretrain/image_to_text/R@1", "test/pretrain/image_to_text/R@10", "test/pretrain/text_to_image/R@5",
                "test/pretrain/retrieval/mean_R@1", "test/pretrain/CIDEr-D", "test_baseline/pretrain/CIDEr-D"):
        assert tag in logged, tag
    # Chance R@1 is 1 / the number of images searched: exactly the Karpathy test images.
    assert logged["test_baseline/pretrain/text_to_image/R@1"][0][1] == pytest.approx(1 / num_test)
    assert logged["test_baseline/pretrain/image_to_text/R@1"][0][1] == pytest.approx(1 / num_test)
    assert "text_to_image/R@1" in capsys.readouterr().out
