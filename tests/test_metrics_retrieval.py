"""RetrievalRecallAtK: hand-computed rankings, pessimistic ties, batching, DDP, and
agreement with torchmetrics' per-query retrieval metrics."""

import itertools

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

from mammut.metrics import RetrievalRecallAtK, chance_recall_at_k

from distributed import on_two_ranks

# Similarities of 3 images (rows) to 6 captions (columns); captions 2i and 2i+1 describe image i.
# Images are the standard basis, so each caption embedding is its column and every
# similarity is exact (ties stay ties).
SIMILARITIES = torch.tensor(
    [
        [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],
        [0.7, 0.6, 0.5, 0.4, 0.95, 0.2],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    ]
)
IMAGE_IDS = torch.tensor([10, 11, 12])
TEXT_IMAGE_IDS = torch.tensor([10, 10, 11, 11, 12, 12])
IMAGES = torch.eye(3)
TEXTS = SIMILARITIES.T.contiguous()

# Image 10: best caption (0.9) is its own -> rank 1. Image 11: its best (0.5) is beaten by
# 0.7, 0.6, 0.95 -> rank 4. Image 12: its best (0.6) beats every other caption -> rank 1.
# Captions' own-image ranks: c0 1, c1 3, c2 2, c3 2 (0.4 tied with image 12: counted
# against it), c4 2, c5 1.
EXPECTED = {
    "image_to_text/R@1": 2 / 3,
    "image_to_text/R@2": 2 / 3,
    "image_to_text/R@4": 1.0,
    "text_to_image/R@1": 2 / 6,
    "text_to_image/R@2": 5 / 6,
    "text_to_image/R@4": 1.0,
}


def as_floats(result):
    return {key: value.item() for key, value in result.items()}


def test_hand_computed_ranking_in_both_directions():
    metric = RetrievalRecallAtK(top_k=(1, 2, 4))
    metric.update(IMAGES, IMAGE_IDS, TEXTS, TEXT_IMAGE_IDS)
    assert as_floats(metric.compute()) == pytest.approx(EXPECTED, abs=1e-7)


def test_default_keys_and_range():
    metric = RetrievalRecallAtK()
    metric.update(IMAGES, IMAGE_IDS, TEXTS, TEXT_IMAGE_IDS)
    result = metric.compute()
    assert sorted(result) == sorted(
        f"{d}/R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    )
    assert result["image_to_text/R@5"] == 1.0 and result["text_to_image/R@10"] == 1.0


def test_ties_count_against_the_model():
    # Every similarity equal: each right answer is ranked after every wrong one.
    metric = RetrievalRecallAtK(top_k=(1, 2, 3, 4, 5))
    metric.update(torch.ones(3, 4), IMAGE_IDS, torch.ones(6, 4), TEXT_IMAGE_IDS)
    result = as_floats(metric.compute())
    # image -> text: the 4 other images' captions come first, so the first own caption is 5th.
    assert [result[f"image_to_text/R@{k}"] for k in (1, 2, 3, 4, 5)] == [0, 0, 0, 0, 1]
    # text -> image: the 2 other images come first.
    assert [result[f"text_to_image/R@{k}"] for k in (1, 2, 3)] == [0, 0, 1]


def test_batched_updates_in_any_order_equal_one_update():
    metric = RetrievalRecallAtK(top_k=(1, 2, 4))
    # Images and captions arrive in different batches, out of order.
    metric.update(IMAGES[[2]], IMAGE_IDS[[2]], TEXTS[[5, 0]], TEXT_IMAGE_IDS[[5, 0]])
    metric.update(IMAGES[:0], IMAGE_IDS[:0], TEXTS[[3, 1, 4]], TEXT_IMAGE_IDS[[3, 1, 4]])
    metric.update(IMAGES[[1, 0]], IMAGE_IDS[[1, 0]], TEXTS[[2]], TEXT_IMAGE_IDS[[2]])
    assert as_floats(metric.compute()) == pytest.approx(EXPECTED, abs=1e-7)


def test_image_repeated_once_per_caption_counts_once():
    # A loader of (image, caption) pairs repeats each image with every caption.
    metric = RetrievalRecallAtK(top_k=(1, 2, 4))
    for caption in range(6):
        image = caption // 2
        metric.update(IMAGES[[image]], IMAGE_IDS[[image]], TEXTS[[caption]], TEXT_IMAGE_IDS[[caption]])
    assert as_floats(metric.compute()) == pytest.approx(EXPECTED, abs=1e-7)


def test_captions_repeated_with_ids_count_once():
    # A padding sampler repeats the first samples; with text ids they are counted once.
    metric = RetrievalRecallAtK(top_k=(1, 2, 4))
    text_ids = torch.arange(6)
    metric.update(IMAGES, IMAGE_IDS, TEXTS, TEXT_IMAGE_IDS, text_ids)
    metric.update(IMAGES[:1], IMAGE_IDS[:1], TEXTS[[1]], TEXT_IMAGE_IDS[[1]], text_ids[[1]])
    assert as_floats(metric.compute()) == pytest.approx(EXPECTED, abs=1e-7)
    # Without ids the repeated caption (rank 3 for its image) counts twice.
    metric = RetrievalRecallAtK(top_k=(1,))
    metric.update(IMAGES, IMAGE_IDS, TEXTS, TEXT_IMAGE_IDS)
    metric.update(IMAGES[:0], IMAGE_IDS[:0], TEXTS[[1]], TEXT_IMAGE_IDS[[1]])
    assert metric.compute()["text_to_image/R@1"].item() == pytest.approx(2 / 7)


def test_image_without_captions_is_a_distractor_only():
    metric = RetrievalRecallAtK(top_k=(1,))
    # Image 13 has no caption and outscores the true image of every caption.
    metric.update(torch.cat([IMAGES, torch.ones(1, 3)]), torch.tensor([10, 11, 12, 13]), TEXTS, TEXT_IMAGE_IDS)
    result = as_floats(metric.compute())
    assert result["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert result["text_to_image/R@1"] == 0.0


def random_retrieval_set(num_images=12, captions_per_image=5, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    text_image_index = torch.arange(num_images).repeat_interleave(captions_per_image)
    # Captions near their image, so recall is neither 0 nor 1.
    noise = torch.randn(len(text_image_index), dim, generator=generator)
    texts = torch.nn.functional.normalize(images[text_image_index] + 1.2 * noise, dim=1)
    image_ids = torch.randperm(1000, generator=generator)[:num_images]
    return images, image_ids, texts, image_ids[text_image_index], text_image_index


@pytest.mark.parametrize("k", [1, 3, 5])
def test_agrees_with_torchmetrics_retrieval_metrics(k):
    images, image_ids, texts, text_image_ids, text_image_index = random_retrieval_set()
    metric = RetrievalRecallAtK(top_k=(k,))
    metric.update(images, image_ids, texts, text_image_ids)
    result = metric.compute()

    scores = texts @ images.T  # (M, N)
    is_own_image = text_image_index[:, None] == torch.arange(len(images))[None, :]
    # text -> image: one query per caption, one relevant image, so recall is hit or miss.
    caption_query = torch.arange(len(texts))[:, None].expand_as(scores)
    text_to_image = RetrievalRecall(top_k=k)(
        scores.flatten(), is_own_image.flatten(), indexes=caption_query.flatten()
    )
    # image -> text: one query per image with 5 relevant captions; "any caption in the
    # top k" is torchmetrics' hit rate (its recall would be the fraction of captions found).
    image_query = torch.arange(len(images))[None, :].expand_as(scores)
    image_to_text = RetrievalHitRate(top_k=k)(
        scores.T.flatten(), is_own_image.T.flatten(), indexes=image_query.T.flatten()
    )

    assert result[f"text_to_image/R@{k}"].item() == pytest.approx(text_to_image.item(), abs=1e-6)
    assert result[f"image_to_text/R@{k}"].item() == pytest.approx(image_to_text.item(), abs=1e-6)
    assert 0 < result[f"text_to_image/R@{k}"] < 1


def test_chunked_computation_equals_unchunked():
    images, image_ids, texts, text_image_ids, _ = random_retrieval_set(num_images=23, seed=1)
    results = []
    for chunk_size in (1, 7, 10_000):
        metric = RetrievalRecallAtK(top_k=(1, 5, 10), chunk_size=chunk_size)
        metric.update(images, image_ids, texts, text_image_ids)
        results.append(as_floats(metric.compute()))
    assert results[0] == results[1] == results[2]


def test_chance_recall_matches_enumerating_every_ranking():
    chance = chance_recall_at_k(IMAGE_IDS, TEXT_IMAGE_IDS, top_k=(1, 2, 5, 10))
    # image -> text: over all orderings of the 6 captions, how often one of image 10's two
    # captions (0 and 1) is in the first k; every image has 2 captions, so this is the mean.
    orderings = list(itertools.permutations(range(6)))
    for k in (1, 2, 5, 10):
        hits = sum(bool({0, 1} & set(order[:k])) for order in orderings)
        assert chance[f"image_to_text/R@{k}"] == pytest.approx(hits / len(orderings))
    assert chance["image_to_text/R@1"] == pytest.approx(2 / 6)
    assert chance["text_to_image/R@1"] == pytest.approx(1 / 3)
    assert chance["text_to_image/R@2"] == pytest.approx(2 / 3)
    assert chance["text_to_image/R@10"] == 1.0


def test_chance_recall_uneven_captions():
    # Image 1 has 3 of 4 captions, image 2 has 1: i->t R@1 = mean(3/4, 1/4).
    chance = chance_recall_at_k(torch.tensor([1, 2, 2]), torch.tensor([1, 1, 1, 2]), top_k=(1,))
    assert chance["image_to_text/R@1"] == pytest.approx(0.5)
    assert chance["text_to_image/R@1"] == pytest.approx(0.5)


def test_unknown_caption_image_is_an_error():
    metric = RetrievalRecallAtK()
    metric.update(IMAGES, IMAGE_IDS, TEXTS, torch.tensor([10, 10, 11, 11, 12, 99]))
    with pytest.raises(ValueError, match=r"\[99\]"):
        metric.compute()


def test_non_finite_embeddings_are_an_error():
    metric = RetrievalRecallAtK()
    metric.update(IMAGES, IMAGE_IDS, torch.full((6, 3), float("nan")), TEXT_IMAGE_IDS)
    with pytest.raises(ValueError, match="NaN"):
        metric.compute()


def test_mismatched_shapes_are_an_error():
    metric = RetrievalRecallAtK()
    with pytest.raises(ValueError, match="text_image_ids"):
        metric.update(IMAGES, IMAGE_IDS, TEXTS, TEXT_IMAGE_IDS[:5])
    with pytest.raises(ValueError, match="dimension"):
        metric.update(IMAGES, IMAGE_IDS, TEXTS[:, :2], TEXT_IMAGE_IDS)


def _compute_on_one_rank(rank):
    metric = RetrievalRecallAtK(top_k=(1, 2, 4))
    # Rank 0 holds images 10 and 11 and captions 0-2; rank 1 the rest.
    images = slice(0, 2) if rank == 0 else slice(2, 3)
    texts = slice(0, 3) if rank == 0 else slice(3, 6)
    metric.update(IMAGES[images], IMAGE_IDS[images], TEXTS[texts], TEXT_IMAGE_IDS[texts])
    return as_floats(metric.compute())


@pytest.mark.slow
def test_ddp_gathers_every_rank(tmp_path):
    results = on_two_ranks(_compute_on_one_rank, tmp_path)
    for rank in (0, 1):
        assert results[rank] == pytest.approx(EXPECTED, abs=1e-7)
