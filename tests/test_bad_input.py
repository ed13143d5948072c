"""Inputs that used to go silently wrong: wide and transparent pixels, answers that normalise
to nothing, a batch larger than the data, texts cut to fit, and skips that went uncounted."""

import json
import logging
import shutil

import lightning as L
import numpy as np
import pytest
import torch
from coco_files import write_dataset
from PIL import Image

from mammut.data import (
    BadSampleError,
    CaptionDataset,
    CaptionTokenizer,
    DataFormatError,
    VQADataset,
    VQARecord,
    collate_eval,
    collate_train,
    collate_vqa,
    image_transform,
    load_rgb_image,
    read_coco_captions,
    read_vqa,
)
from mammut.tasks.pretrain import ImageTextDataModule

from tiny_run import checkpoint_every, run, scalars

# ---------------------------------------------------------------------- wide pixels


def _gradient_16_bit():
    """One row of 512 values over the whole 16-bit range."""
    return np.linspace(0, 65535, 512).round().astype(np.uint16)[None, :]


def test_a_16_bit_png_keeps_its_gradient(tmp_path):
    values = _gradient_16_bit()
    Image.fromarray(values).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode == "I;16"

    image = load_rgb_image(tmp_path / "depth.png")

    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (1, 512, 3)
    np.testing.assert_array_equal(pixels[..., 0], np.rint(values / 257))
    assert (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels[0, 0, 0] == 0 and pixels[0, 256, 0] == 128 and pixels[0, -1, 0] == 255


def test_32_bit_integer_and_float_tiffs_keep_their_values(tmp_path):
    Image.fromarray(_gradient_16_bit().astype(np.int32)).save(tmp_path / "int.tif")
    floats = np.linspace(0, 1, 64, dtype=np.float32)[None, :]
    Image.fromarray(floats).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I" and Image.open(tmp_path / "float.tif").mode == "F"

    integers = np.asarray(load_rgb_image(tmp_path / "int.tif"))[..., 1]
    reals = np.asarray(load_rgb_image(tmp_path / "float.tif"))[..., 1]

    np.testing.assert_array_equal(integers, np.rint(_gradient_16_bit() / 257))
    np.testing.assert_array_equal(reals, np.rint(floats * 255))


@pytest.mark.parametrize("values, message", [
    (np.array([[0, 70000]], dtype=np.int32), "pixels range from 0 to 70000"),
    (np.array([[-5, 100]], dtype=np.int32), "pixels range from -5 to 100"),
    (np.array([[0.0, 255.0]], dtype=np.float32), r"float pixels range from 0.0 to 255.0; only \[0, 1\]"),
])
def test_pixels_without_a_known_scale_are_bad_samples_naming_the_file(tmp_path, values, message):
    Image.fromarray(values).save(tmp_path / "odd.tif")

    with pytest.raises(BadSampleError, match=rf"odd.tif: .*{message}"):
        load_rgb_image(tmp_path / "odd.tif")


# ---------------------------------------------------------------------- transparency


def test_transparent_pixels_show_the_background_and_half_transparent_ones_blend(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # red, fully transparent
    rgba[0, 1] = (255, 0, 0, 128)  # red, half transparent
    rgba[0, 2] = (0, 0, 255, 255)  # blue, opaque
    Image.fromarray(rgba).save(tmp_path / "logo.png")

    on_white = np.asarray(load_rgb_image(tmp_path / "logo.png")).astype(int)
    on_black = np.asarray(load_rgb_image(tmp_path / "logo.png", background=(0, 0, 0))).astype(int)

    assert on_white[0, 0].tolist() == [255, 255, 255] and on_black[0, 0].tolist() == [0, 0, 0]
    np.testing.assert_allclose(on_white[0, 1], [255, 127, 127], atol=1)
    np.testing.assert_allclose(on_black[0, 1], [128, 0, 0], atol=1)
    assert on_white[0, 2].tolist() == on_black[0, 2].tolist() == [0, 0, 255]


def test_grey_alpha_palette_and_16_bit_transparency_are_composited(tmp_path):
    grey_alpha = Image.new("LA", (2, 1), (0, 0))  # black, fully transparent
    grey_alpha.putpixel((1, 0), (0, 255))
    grey_alpha.save(tmp_path / "la.png")
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])  # entry 0 red (transparent), entry 1 blue
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.fromarray(np.array([[0, 40000]], dtype=np.uint16)).save(tmp_path / "deep.png", transparency=0)

    assert np.asarray(load_rgb_image(tmp_path / "la.png")).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    assert np.asarray(load_rgb_image(tmp_path / "palette.png")).tolist() == [[[255, 255, 255], [0, 0, 255]]]
    assert np.asarray(load_rgb_image(tmp_path / "deep.png")).tolist() == [[[255, 255, 255], [156, 156, 156]]]


# ---------------------------------------------------------------------- VQA answers


def _write_vqa(folder, answers_by_question):
    questions = [{"question_id": q, "image_id": 7, "question": "what is it?"} for q in answers_by_question]
    annotations = [{"question_id": q, "image_id": 7, "answers": [{"answer": a} for a in answers],
                    "multiple_choice_answer": answers[0], "question_type": "what", "answer_type": "other"}
                   for q, answers in answers_by_question.items()]
    (folder / "questions.json").write_text(json.dumps({"questions": questions}))
    (folder / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return folder / "questions.json", folder / "annotations.json"


def test_answers_that_all_normalise_to_nothing_name_the_question_or_are_skipped(tmp_path):
    q, a = _write_vqa(tmp_path, {1: ["red"] * 10, 2: ["a", ".", "the", "a"] + ["the"] * 6, 3: ["An", "two"]})

    with pytest.raises(DataFormatError,
                       match=r"questions.json: question id 2: no answer left after normalisation: \['a', '.', 'the'\]"):
        read_vqa(q, a, tmp_path)
    records, skipped = read_vqa(q, a, tmp_path, skip_bad_samples=True)

    assert [r.question_id for r in records] == [1, 3] and skipped == 1


def test_drawing_from_no_answer_names_the_question(tiny_demo):
    record = VQARecord(question_id=5, image_id=1, path=tiny_demo / "none.jpg", question="what?", answers=("the",) * 3)
    data = VQADataset([record], CaptionTokenizer.from_file(tiny_demo / "tokenizer.json"),
                      image_transform(32, train=True), 24, train=True)

    with pytest.raises(DataFormatError, match=r"question id 5: no answer left after normalisation: \['the'\]"):
        data.training_answer(0)


# ---------------------------------------------------------------------- batch size


def _data(tiny_demo, **kwargs):
    return ImageTextDataModule(root=str(tiny_demo), num_workers=0, context_length=24, image_size=32, **kwargs)


def test_a_batch_larger_than_each_ranks_share_is_an_error_naming_the_numbers(tiny_demo):
    data = _data(tiny_demo, batch_size=24)
    # A real two-process DDP trainer, not launched: it reports the shards its ranks would take.
    data.trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False)
    assert data.trainer.distributed_sampler_kwargs["num_replicas"] == 2

    with pytest.raises(ValueError, match=r"data.batch_size=24 per device × 2 device\(s\) exceeds the 40 training "
                                         r"samples \(20 per device\)"):
        data.train_loader(list(range(40)), collate_train)
    assert len(data.train_loader(list(range(48)), collate_train)) == 1
    with pytest.raises(ValueError, match="training set is empty"):
        data.train_loader([], collate_train)


# ---------------------------------------------------------------------- truncation


def test_tokenizer_reports_the_length_before_truncation(tiny_demo):
    tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
    text = "a small red circle left of a big blue square"
    full = tokenizer.encode(text, 64)

    cut, length = tokenizer.encode(text, 6, return_length=True)
    tokens, lengths = tokenizer.encode_batch([text, "red"], 6, return_lengths=True)

    assert length == len(full) > 6 and cut == [*full[:5], tokenizer.eos_id]
    assert lengths == [len(full), 3] and tokens[0].tolist() == cut
    assert torch.equal(tokenizer.encode_batch([text, "red"], 6), tokens)  # the old call is unchanged


def test_cut_captions_are_named_and_counted_in_the_batch(tmp_path):
    long = "a very long caption about a small red circle and a big blue square and a star"
    records, _ = read_coco_captions(write_dataset(tmp_path, {1: [long], 2: ["red", long, long]}), tmp_path / "images")
    tokenizer = CaptionTokenizer.train([long, "red"] * 5, vocab_size=300)

    def dataset(train):
        return CaptionDataset(records, tokenizer, image_transform(16, train=train), 8, train=train)

    train = collate_train([dataset(True)[0]])
    evaluation = collate_eval([dataset(False)[0], dataset(False)[1]])

    length = len(tokenizer.token_ids(long)) + 2
    assert train.truncated == [f"image id 1: caption of {length} tokens cut to the context length 8"]
    assert evaluation.num_truncated == 3 and evaluation.truncated[1].startswith("image id 2: ")
    drawn = records[1].captions[dataset(True).caption_index(1)]
    assert collate_train([dataset(True)[1]]).num_truncated == (drawn == long)


def test_cut_vqa_texts_are_named_and_counted_in_the_batch(tiny_demo):
    tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
    image = sorted((tiny_demo / "images/val").iterdir())[0]
    long_question = "is there a big red circle left of a small blue square and a star?"
    long_answer = "red circle blue square green star yellow cross " * 2
    records = [VQARecord(1, 1, image, "what color?", ("red",) * 10),
               VQARecord(2, 1, image, long_question, ("yes",) * 10),
               VQARecord(3, 1, image, "what color?", (long_answer,) * 10)]
    data = VQADataset(records, tokenizer, image_transform(32, train=True), 16, train=True)
    question, answer = len(tokenizer.token_ids(long_question)), len(tokenizer.token_ids(data.training_answer(2)))
    assert answer > 12 and len(tokenizer.token_ids("what color?")) > 1

    batch = collate_vqa([data[0], data[1], data[2]])

    room = 16 - 2 - data.answer_room  # bos, sep and the room kept for the answer and its eos
    left_for_answer = 16 - (len(tokenizer.token_ids("what color?")) + 2) - 1  # after the prompt, before eos
    assert batch.num_truncated == 2
    assert batch.truncated == [
        f"question id 2: question of {question} tokens cut to {room} to fit the context length 16",
        f"question id 3: answer of {answer} tokens cut to {left_for_answer} to fit the context length 16",
    ]


# ---------------------------------------------------------------------- end to end


def _demo_with_bad_records(tiny_demo, tmp_path):
    """The tiny demo world with 2 bad training records (an empty caption, an image without
    captions), 1 bad validation record, a corrupt validation image, and one training image
    whose every caption is longer than the context."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root)
    train_file, val_file = root / "annotations/captions_train.json", root / "annotations/captions_val.json"
    train, val = json.loads(train_file.read_text()), json.loads(val_file.read_text())
    train["annotations"][0]["caption"] = " "
    train["images"].append({"id": 9999, "file_name": "absent.jpg"})
    long_image = train["images"][10]["id"]
    for annotation in train["annotations"]:
        if annotation["image_id"] == long_image:
            annotation["caption"] = " ".join(["a small red circle left of a big blue square"] * 4)
    val["annotations"][3]["caption"] = ""
    train_file.write_text(json.dumps(train))
    val_file.write_text(json.dumps(val))
    sorted((root / "images/val").iterdir())[7].write_bytes(b"not an image")
    return root, long_image


@pytest.mark.slow
def test_every_skip_and_cut_is_counted_once_also_after_a_resume(tiny_demo, tmp_path, caplog):
    root, long_image = _demo_with_bad_records(tiny_demo, tmp_path)
    common = ["--data.skip_bad_samples=true", "--trainer.val_check_interval=3", "--model.generation.max_new_tokens=2"]
    # 48 training images, 8 a step: validations after steps 3 and 6; the first run stops after step 4.
    with caplog.at_level(logging.WARNING, logger="mammut.module"):
        run("fit", root, tmp_path, "--trainer.max_steps=4", "--trainer.logger.init_args.version=first",
            *checkpoint_every(tmp_path, 1), *common)
        first = scalars(tmp_path / "pretrain/first")
        run("fit", root, tmp_path, "--trainer.max_steps=6", "--trainer.logger.init_args.version=resumed",
            f"--ckpt_path={tmp_path / 'pretrain/first/checkpoints/last.ckpt'}", *common)
    resumed = scalars(tmp_path / "pretrain/resumed")

    # Read: 2 training records (counted from the first step) and 1 validation record (from the
    # first validation). Met: the corrupt image once per validation; the sanity check does not count.
    skipped = [value for _, value in first["data/skipped_samples"]]
    assert skipped[0] == 2 and max(skipped) == 4
    # 1 restored from the checkpoint, 3 read again and 1 met again: the read-time skips are not added twice.
    assert max(value for _, value in resumed["data/skipped_samples"]) == 5
    # The long-captioned image is drawn once in the epoch, in one run or the other.
    assert max(value for _, value in resumed["data/truncated_texts"]) == 1
    warnings = [r.getMessage() for r in caplog.records if "data/truncated_texts" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"image id {long_image}: caption of ")
    assert "cut to the context length 24" in warnings[0]


@pytest.mark.slow
def test_a_batch_larger_than_the_training_set_fails_the_run(tiny_demo, tmp_path):
    with pytest.raises(ValueError, match=r"data.batch_size=64 per device × 1 device\(s\) exceeds the 48 training"):
        run("fit", tiny_demo, tmp_path, "--data.batch_size=64", "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0")
