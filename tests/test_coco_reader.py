"""read_coco_captions on real COCO-captions files: ordering, and every malformed input."""

import dataclasses
import logging

import pytest
from coco_files import CAPTIONS, coco_captions, write_coco

from mammut.data import CaptionRecord, DataFormatError, read_coco_captions


def test_records_are_ordered_by_image_id_with_captions_in_annotation_id_order(tmp_path):
    file = write_coco(tmp_path / "captions.json", coco_captions(CAPTIONS))

    records, skipped = read_coco_captions(file, tmp_path / "images")

    assert skipped == 0
    assert [record.image_id for record in records] == [1, 2, 3]
    # Annotation ids run backwards through each image's list in the file.
    assert records[2].captions == tuple(reversed(CAPTIONS[3]))
    assert records[0].path == tmp_path / "images" / "000000000001.jpg"
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].captions = ()


def test_captions_are_stripped_and_image_files_are_not_opened(tmp_path):
    file = write_coco(tmp_path / "captions.json", coco_captions({5: ["  a red circle \n"]}))

    records, _ = read_coco_captions(file, tmp_path / "nowhere")

    assert records == [CaptionRecord(5, tmp_path / "nowhere" / "000000000005.jpg", ("a red circle",))]


def test_malformed_json_names_the_file_and_line(tmp_path):
    file = tmp_path / "broken.json"
    file.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')

    with pytest.raises(DataFormatError) as error:
        read_coco_captions(file, tmp_path)

    assert str(file) in str(error.value)
    assert "line 3" in str(error.value)


def _without_top_level(key):
    return lambda document: {name: value for name, value in document.items() if name != key}


def _without(document, section, record_id, key):
    for record in document[section]:
        if record["id"] == record_id:
            del record[key]
    return document


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_without_top_level("images"), ["top level", "'images'"]),
        (_without_top_level("annotations"), ["top level", "'annotations'"]),
        (lambda d: _without(d, "images", 1, "file_name"), ["images[1]", "image id 1", "'file_name'"]),
        (lambda d: _without(d, "images", 1, "id"), ["images[1]", "'id'"]),
        (lambda d: _without(d, "annotations", 1097, "caption"), ["annotation id 1097", "'caption'"]),
        (lambda d: _without(d, "annotations", 1097, "image_id"), ["annotation id 1097", "'image_id'"]),
    ],
)
def test_missing_keys_name_the_file_and_record(tmp_path, edit, expected):
    file = write_coco(tmp_path / "captions.json", edit(coco_captions(CAPTIONS)))

    with pytest.raises(DataFormatError) as error:
        read_coco_captions(file, tmp_path)

    for text in [str(file), *expected]:
        assert text in str(error.value)


def test_wrong_value_types_are_errors(tmp_path):
    document = coco_captions(CAPTIONS)
    document["annotations"][0]["image_id"] = "3"
    file = write_coco(tmp_path / "captions.json", document)

    with pytest.raises(DataFormatError, match="'image_id' must be int"):
        read_coco_captions(file, tmp_path)


def test_annotation_of_unknown_image_is_an_error_even_when_skipping(tmp_path):
    document = coco_captions(CAPTIONS)
    document["annotations"].append({"id": 7, "image_id": 99, "caption": "a stray caption"})
    file = write_coco(tmp_path / "captions.json", document)

    with pytest.raises(DataFormatError, match="annotation id 7.*image id 99"):
        read_coco_captions(file, tmp_path, skip_bad_samples=True)


def test_duplicate_image_id_is_an_error(tmp_path):
    document = coco_captions(CAPTIONS)
    document["images"].append({"id": 3, "file_name": "other.jpg"})
    file = write_coco(tmp_path / "captions.json", document)

    with pytest.raises(DataFormatError, match="duplicate image id 3"):
        read_coco_captions(file, tmp_path)


def test_empty_caption_error_names_the_file_and_annotation_id(tmp_path):
    captions = {**CAPTIONS, 1: ["a small blue square", "   "]}
    file = write_coco(tmp_path / "captions.json", coco_captions(captions))

    with pytest.raises(DataFormatError) as error:
        read_coco_captions(file, tmp_path)

    # The second caption of image 1 has annotation id 1100 - 1.
    assert str(file) in str(error.value)
    assert "annotation id 1099" in str(error.value)


def test_skipping_drops_and_counts_empty_captions_and_images_left_without_captions(tmp_path, caplog):
    captions = {**CAPTIONS, 1: ["a small blue square", "   "], 2: [""]}
    file = write_coco(tmp_path / "captions.json", coco_captions(captions))

    with caplog.at_level(logging.WARNING, logger="mammut.data.coco"):
        records, skipped = read_coco_captions(file, tmp_path, skip_bad_samples=True)

    # Two empty captions, and image 2 is left with none.
    assert skipped == 3
    assert {record.image_id: record.captions for record in records} == {
        1: ("a small blue square",),
        3: tuple(reversed(CAPTIONS[3])),
    }
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "annotation id 1099" in warnings and "annotation id 1200" in warnings
    assert "image id 2" in warnings and str(file) in warnings


def test_image_without_any_annotation_is_an_error_unless_skipping(tmp_path):
    document = coco_captions(CAPTIONS)
    document["images"].append({"id": 8, "file_name": "lonely.jpg"})
    file = write_coco(tmp_path / "captions.json", document)

    with pytest.raises(DataFormatError, match="image id 8 .*no captions"):
        read_coco_captions(file, tmp_path)
    records, skipped = read_coco_captions(file, tmp_path, skip_bad_samples=True)
    assert skipped == 1 and [record.image_id for record in records] == [1, 2, 3]
