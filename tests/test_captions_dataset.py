"""Image loading, transforms, CaptionDataset and its collates, with real JPEGs on disk."""

import logging
import random

import pytest
import torch
from coco_files import CAPTIONS, write_dataset, write_jpeg
from PIL import Image
from torch.utils.data import DataLoader

from mammut.data import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadSampleError,
    CaptionDataset,
    CaptionTokenizer,
    ImageCaptionsBatch,
    ImageTextBatch,
    collate_eval,
    collate_train,
    image_transform,
    load_rgb_image,
    read_coco_captions,
)

IMAGE_SIZE = 16
CONTEXT_LENGTH = 12


@pytest.fixture(scope="module")
def tokenizer():
    texts = [caption for captions in CAPTIONS.values() for caption in captions] * 5
    return CaptionTokenizer.train(texts, vocab_size=300)


def make_dataset(records, tokenizer, train=True, **options):
    return CaptionDataset(
        records, tokenizer, image_transform(IMAGE_SIZE, train=train), CONTEXT_LENGTH, train=train, **options
    )


def normalised(text):
    return " ".join(text.lower().split())


# ---------------------------------------------------------------------- load_rgb_image


def test_load_rgb_image_decodes_and_converts_to_rgb(tmp_path):
    Image.new("L", (10, 6), 128).save(tmp_path / "grey.png")
    write_jpeg(tmp_path / "red.jpg", colour=(250, 0, 0), size=(8, 5))

    grey, red = load_rgb_image(tmp_path / "grey.png"), load_rgb_image(tmp_path / "red.jpg")

    assert grey.mode == "RGB" and grey.size == (10, 6) and grey.getpixel((3, 3)) == (128, 128, 128)
    assert red.mode == "RGB" and red.size == (8, 5)
    assert red.getpixel((4, 2))[0] > 200 and red.getpixel((4, 2))[1] < 30


def _noise_jpeg(path):
    pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(path, format="JPEG", quality=95)
    return path.read_bytes()


def _truncated(path):
    data = _noise_jpeg(path)
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path):
    path.write_bytes(random.Random(0).randbytes(2000))


@pytest.mark.parametrize(
    "write_broken_file",
    [
        _truncated,
        _random_bytes,
        lambda path: path.write_text("this is a caption file, not an image"),
        lambda path: path.write_bytes(b""),
        lambda path: None,  # the file is missing
    ],
    ids=["truncated", "random-bytes", "text", "empty", "missing"],
)
def test_broken_image_files_raise_bad_sample_error_naming_the_path(tmp_path, write_broken_file):
    path = tmp_path / "000000000042.jpg"
    write_broken_file(path)

    with pytest.raises(BadSampleError, match="000000000042.jpg"):
        load_rgb_image(path)


def test_missing_file_message_says_not_found(tmp_path):
    with pytest.raises(BadSampleError, match="not found"):
        load_rgb_image(tmp_path / "absent.jpg")


# ---------------------------------------------------------------------- transforms


def _half_white_left(size=(40, 20)):
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, size[0] // 2, size[1]))
    return image


@pytest.mark.parametrize("train", [True, False])
def test_transform_resizes_normalises_and_keeps_left_and_right(train):
    transform = image_transform(IMAGE_SIZE, train=train)

    first, second = transform(_half_white_left()), transform(_half_white_left())

    assert first.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and first.dtype == torch.float32
    assert torch.equal(first, second)  # no random augmentation by default
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    # The whole image is kept (no crop, no flip): white on the left, black on the right.
    torch.testing.assert_close(first[:, :, 0].mean(dim=1), white, atol=1e-3, rtol=0)
    torch.testing.assert_close(first[:, :, -1].mean(dim=1), black, atol=1e-3, rtol=0)


def test_transform_keeps_colours_and_takes_other_statistics():
    transform = image_transform(8, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    pixels = transform(Image.new("RGB", (8, 8), (255, 0, 0)))

    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(pixels.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)


def test_random_resized_crop_is_opt_in_and_training_only():
    image = _half_white_left((64, 64))
    torch.manual_seed(0)
    crops = [image_transform(IMAGE_SIZE, train=True, random_resized_crop_scale=(0.1, 0.3))(image) for _ in range(8)]
    evaluation = image_transform(IMAGE_SIZE, train=False, random_resized_crop_scale=(0.1, 0.3))

    assert all(crop.shape == (3, IMAGE_SIZE, IMAGE_SIZE) for crop in crops)
    assert any(not torch.equal(crops[0], crop) for crop in crops[1:])
    assert torch.equal(evaluation(image), image_transform(IMAGE_SIZE, train=False)(image))


# ---------------------------------------------------------------------- CaptionDataset


@pytest.fixture()
def records(tmp_path):
    records, _ = read_coco_captions(write_dataset(tmp_path), tmp_path / "images")
    return records


def test_train_sample_has_image_one_caption_and_id(records, tokenizer):
    dataset = make_dataset(records, tokenizer)

    sample = dataset[1]

    assert sample.image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert sample.image_id == records[1].image_id
    assert sample.tokens.shape == (CONTEXT_LENGTH,) and sample.tokens.dtype == torch.long
    chosen = records[1].captions[dataset.caption_index(1)]
    assert tokenizer.decode(sample.tokens) == normalised(tokenizer.decode(tokenizer.encode(chosen, CONTEXT_LENGTH)))


def test_caption_choice_depends_only_on_seed_epoch_and_index(records, tokenizer):
    many = [records[i % len(records)] for i in range(30)]
    dataset, same_seed = make_dataset(many, tokenizer, seed=7), make_dataset(many, tokenizer, seed=7)

    def choices(ds, epoch):
        ds.set_epoch(epoch)
        return [ds.caption_index(i) for i in range(len(ds))]

    epoch_0 = choices(dataset, 0)
    torch.manual_seed(123), random.seed(123)  # the global RNGs play no part
    assert choices(same_seed, 0) == epoch_0
    assert [dataset[i].tokens.tolist() for i in range(3)] == [same_seed[i].tokens.tolist() for i in range(3)]
    # 30 draws from 5 captions: equal lists by chance have probability 5**-30.
    assert choices(dataset, 1) != epoch_0
    assert choices(make_dataset(many, tokenizer, seed=8), 0) != epoch_0
    assert choices(dataset, 0) == epoch_0  # going back to an epoch gives its choices again
    assert len(set(epoch_0)) > 1


def test_eval_sample_has_all_captions(records, tokenizer):
    sample = make_dataset(records, tokenizer, train=False)[2]

    assert sample.captions == records[2].captions
    assert sample.caption_tokens.shape == (len(records[2].captions), CONTEXT_LENGTH)
    assert tokenizer.decode(sample.caption_tokens[0]) == normalised(records[2].captions[0])


def _break_image(records, index):
    records[index].path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return records[index].path


def test_bad_sample_raises_naming_the_file_unless_skipping(records, tokenizer, caplog):
    path = _break_image(records, 1)

    with pytest.raises(BadSampleError, match=str(path)):
        make_dataset(records, tokenizer)[1]
    with caplog.at_level(logging.WARNING, logger="mammut.data.captions_dataset"):
        assert make_dataset(records, tokenizer, skip_bad_samples=True)[1] is None
    assert str(path) in caplog.text


def test_collates_drop_and_count_bad_samples(records, tokenizer):
    _break_image(records, 0)
    train = make_dataset(records, tokenizer, skip_bad_samples=True)
    evaluation = make_dataset(records, tokenizer, train=False, skip_bad_samples=True)

    batch = collate_train([train[i] for i in range(3)])
    eval_batch = collate_eval([evaluation[i] for i in range(3)])

    assert isinstance(batch, ImageTextBatch) and len(batch) == 2 and batch.num_skipped == 1
    assert batch.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.tokens.shape == (2, CONTEXT_LENGTH)
    assert batch.image_ids.tolist() == [records[1].image_id, records[2].image_id]
    assert isinstance(eval_batch, ImageCaptionsBatch) and len(eval_batch) == 2 and eval_batch.num_skipped == 1
    captions = [len(records[1].captions), len(records[2].captions)]
    assert eval_batch.caption_tokens.shape == (sum(captions), CONTEXT_LENGTH)
    assert eval_batch.caption_image_ids.tolist() == [records[1].image_id] * captions[0] + [records[2].image_id] * captions[1]
    assert eval_batch.references == [list(records[1].captions), list(records[2].captions)]


def test_a_batch_of_only_bad_samples_is_empty_but_counted():
    batch, eval_batch = collate_train([None, None]), collate_eval([None])

    assert len(batch) == 0 and batch.num_skipped == 2 and batch.tokens.shape[0] == 0
    assert len(eval_batch) == 0 and eval_batch.num_skipped == 1 and eval_batch.references == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU")
def test_batches_can_be_pinned(records, tokenizer):
    batch = collate_train([make_dataset(records, tokenizer)[0]]).pin_memory()

    assert batch.images.is_pinned() and batch.tokens.is_pinned() and batch.num_skipped == 0


# ---------------------------------------------------------------------- DataLoader


@pytest.fixture()
def many_records(tmp_path):
    """Twelve images, the fifth one a broken JPEG."""
    captions = {image_id: [f"caption {n} of image {image_id}" for n in range(5)] for image_id in range(1, 13)}
    records, _ = read_coco_captions(write_dataset(tmp_path, captions), tmp_path / "images")
    _break_image(records, 4)
    return records


def test_dataloader_with_two_workers_skips_and_counts_bad_samples(many_records, tokenizer):
    dataset = make_dataset(many_records, tokenizer, seed=3, skip_bad_samples=True)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_train)

    batches = list(loader)

    assert sum(batch.num_skipped for batch in batches) == 1
    ids = torch.cat([batch.image_ids for batch in batches]).tolist()
    assert ids == [record.image_id for i, record in enumerate(many_records) if i != 4]
    # Workers choose the captions the main process would have chosen.
    tokens = torch.cat([batch.tokens for batch in batches])
    expected = torch.stack([dataset[i].tokens for i in range(len(dataset)) if i != 4])
    assert torch.equal(tokens, expected)


def test_set_epoch_reaches_persistent_workers(many_records, tokenizer):
    good = [record for i, record in enumerate(many_records) if i != 4]
    dataset = make_dataset(good, tokenizer, seed=5)
    loader = DataLoader(dataset, batch_size=6, num_workers=2, persistent_workers=True, collate_fn=collate_train)

    seen = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        seen[epoch] = torch.cat([batch.tokens for batch in loader])

    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        assert torch.equal(seen[epoch], torch.stack([dataset[i].tokens for i in range(len(dataset))]))
    assert not torch.equal(seen[0], seen[1])


def test_dataloader_with_two_workers_and_eval_collate(many_records, tokenizer):
    dataset = make_dataset(many_records, tokenizer, train=False, skip_bad_samples=True)
    loader = DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=collate_eval)

    batches = list(loader)

    assert [len(batch) for batch in batches] == [4, 5, 2]
    assert [batch.num_skipped for batch in batches] == [1, 0, 0]
    assert sum(batch.caption_tokens.shape[0] for batch in batches) == 11 * 5
    assert batches[1].references[0] == list(many_records[5].captions)
