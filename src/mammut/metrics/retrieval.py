"""Zero-shot image<->text retrieval recall@K where each image has several captions.

COCO and Flickr30k evaluate retrieval with several captions per image (5 on COCO):

- image -> text: an image scores a hit at K when *any* of its captions is among the
  K captions most similar to it;
- text -> image: a caption scores a hit at K when *its* image is among the K images
  most similar to it.

Similarity is the dot product of the (already normalised) embeddings.

Ties are broken pessimistically: every wrong candidate that scores the same as the
right one is ranked above it. A collapsed model whose embeddings are all equal
therefore gets the recall of the worst ordering, never a lucky one.

Embeddings are accumulated in "cat" states, so under DDP every rank computes the
recall over the gathered evaluation set. Padding samplers (DistributedSampler
repeats samples to even out ranks) and loaders that yield one (image, caption) pair
per sample both repeat images; images with the same id are therefore counted once,
and captions too when `text_ids` are given.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

IMAGE_TO_TEXT = "image_to_text"
TEXT_TO_IMAGE = "text_to_image"
NO_TEXT_ID = -1


class RetrievalRecallAtK(Metric):
    """Recall@K in both directions over an evaluation set with several captions per image.

    Args:
        top_k: the K values to report.
        chunk_size: rows of the similarity matrix computed at a time; bounds memory at
            `chunk_size * max(num_images, num_captions)` scores.

    `compute()` returns `{"image_to_text/R@1": ..., "text_to_image/R@1": ..., ...}`,
    one 0-dim tensor in [0, 1] per direction and K. Images without any caption are
    distractors: they count as candidates for text -> image but are left out of the
    image -> text average, where recall is undefined for them.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, top_k: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_k = _validated_top_k(top_k)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        for name in ("image_embeddings", "image_ids", "text_embeddings", "text_image_ids", "text_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_embeddings: Tensor,
        image_ids: Tensor,
        text_embeddings: Tensor,
        text_image_ids: Tensor,
        text_ids: Tensor | None = None,
    ) -> None:
        """Add a batch. Each embedding tensor comes right before the ids that name its rows.

        Args:
            image_embeddings: (B, D) image embeddings.
            image_ids: (B,) integer id of each image.
            text_embeddings: (M, D) caption embeddings; M may differ from B, and either may be 0.
            text_image_ids: (M,) id of the image each caption describes.
            text_ids: optional (M,) non-negative id of each caption, used only to count a
                caption once when it is seen more than once.
        """
        if text_ids is None:
            text_ids = torch.full_like(text_image_ids, NO_TEXT_ID)
        _check_rows("image_embeddings", image_embeddings, "image_ids", image_ids)
        _check_rows("text_embeddings", text_embeddings, "text_image_ids", text_image_ids)
        _check_ids("text_ids", text_ids, len(text_image_ids))
        if (text_ids < NO_TEXT_ID).any():
            raise ValueError("text_ids must be non-negative")
        if image_embeddings.shape[1] != text_embeddings.shape[1]:
            raise ValueError(
                f"image_embeddings have dimension {image_embeddings.shape[1]} "
                f"but text_embeddings have {text_embeddings.shape[1]}"
            )
        self.image_embeddings.append(image_embeddings.detach())
        self.image_ids.append(image_ids.long())
        self.text_embeddings.append(text_embeddings.detach())
        self.text_image_ids.append(text_image_ids.long())
        self.text_ids.append(text_ids.long())

    def compute(self) -> dict[str, Tensor]:
        if len(self.image_ids) == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        images, image_ids = _deduplicated_images(
            dim_zero_cat(self.image_embeddings), dim_zero_cat(self.image_ids).long()
        )
        texts, text_image_ids = _deduplicated_texts(
            dim_zero_cat(self.text_embeddings),
            dim_zero_cat(self.text_image_ids).long(),
            dim_zero_cat(self.text_ids).long(),
        )
        if len(text_image_ids) == 0:
            raise ValueError("no captions were given to retrieve")
        for name, embeddings in (("image", images), ("text", texts)):
            if not torch.isfinite(embeddings).all():
                raise ValueError(f"{name} embeddings contain NaN or infinite values")
        # Upcast half precision: fewer spurious ties, and ties are scored against the model.
        dtype = torch.promote_types(images.dtype, torch.float32)
        images, texts = images.to(dtype), texts.to(dtype)
        text_image_index = _image_index_of_each_text(image_ids, text_image_ids)

        image_ranks, has_caption = image_to_text_ranks(images, texts, text_image_index, self.chunk_size)
        text_ranks = text_to_image_ranks(images, texts, text_image_index, self.chunk_size)
        image_ranks = image_ranks[has_caption]

        recalls = {}
        for direction, ranks in ((IMAGE_TO_TEXT, image_ranks), (TEXT_TO_IMAGE, text_ranks)):
            for k in self.top_k:
                recalls[f"{direction}/R@{k}"] = (ranks <= k).float().mean()
        return recalls


def image_to_text_ranks(
    images: Tensor, texts: Tensor, text_image_index: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """1-based rank of each image's best-ranked caption, ties counted against the image.

    Returns (ranks (N,), has_caption (N,)); images without captions get rank M + 1.
    """
    ranks, has_caption = [], []
    for start in range(0, len(images), chunk_size):
        scores = images[start : start + chunk_size] @ texts.T  # (c, M)
        rows = torch.arange(start, start + len(scores), device=scores.device)
        is_positive = text_image_index[None, :] == rows[:, None]  # (c, M)
        best_positive = scores.masked_fill(~is_positive, -math.inf).amax(dim=1, keepdim=True)
        negatives_at_or_above = ((scores >= best_positive) & ~is_positive).sum(dim=1)
        ranks.append(1 + negatives_at_or_above)
        has_caption.append(is_positive.any(dim=1))
    return torch.cat(ranks), torch.cat(has_caption)


def text_to_image_ranks(images: Tensor, texts: Tensor, text_image_index: Tensor, chunk_size: int) -> Tensor:
    """1-based rank of each caption's image among all images, ties counted against the caption."""
    ranks = []
    for start in range(0, len(texts), chunk_size):
        scores = texts[start : start + chunk_size] @ images.T  # (c, N)
        positive = scores.gather(1, text_image_index[start : start + chunk_size, None])  # (c, 1)
        # The positive image is counted by ">=" too, which makes the rank 1-based.
        ranks.append((scores >= positive).sum(dim=1))
    return torch.cat(ranks)


def chance_recall_at_k(
    image_ids: Tensor, text_image_ids: Tensor, top_k: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Expected recall@K of a uniformly random ranking on this evaluation set.

    Text -> image: K / N for N distinct images. Image -> text: an image with c of the
    M captions is hit when one of them lands in the top K, which has probability
    1 - C(M - c, K) / C(M, K) (c / M at K = 1); averaged over the images that have
    captions, as `RetrievalRecallAtK` does. Keys match `RetrievalRecallAtK.compute()`.
    """
    top_k = _validated_top_k(top_k)
    distinct_images = set(image_ids.tolist())
    captions_per_image = Counter(text_image_ids.tolist())
    missing = set(captions_per_image) - distinct_images
    if missing:
        raise ValueError(f"captions refer to image ids that are not in image_ids: {sorted(missing)[:10]}")
    num_images, num_texts = len(distinct_images), len(text_image_ids)
    if num_texts == 0:
        raise ValueError("no captions were given")
    # Images sharing a caption count share a hit probability, so group them.
    images_per_caption_count = Counter(captions_per_image.values())
    recalls = {}
    for k in top_k:
        listed = min(k, num_texts)  # a ranking cannot list more captions than there are
        hit_probability_sum = sum(
            # Integer difference first: 1 - ratio loses digits when the ratio is near 1.
            count
            * (math.comb(num_texts, listed) - math.comb(num_texts - c, listed))
            / math.comb(num_texts, listed)
            for c, count in images_per_caption_count.items()
        )
        recalls[f"{IMAGE_TO_TEXT}/R@{k}"] = hit_probability_sum / len(captions_per_image)
        recalls[f"{TEXT_TO_IMAGE}/R@{k}"] = min(k, num_images) / num_images
    return recalls


def _validated_top_k(top_k: Sequence[int]) -> tuple[int, ...]:
    top_k = tuple(sorted(set(int(k) for k in top_k)))
    if not top_k or top_k[0] < 1:
        raise ValueError(f"top_k must be positive integers, got {top_k}")
    return top_k


def _check_rows(embeddings_name: str, embeddings: Tensor, ids_name: str, ids: Tensor) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"{embeddings_name} must be 2-D (rows, dim), got shape {tuple(embeddings.shape)}")
    _check_ids(ids_name, ids, len(embeddings))


def _check_ids(name: str, ids: Tensor, expected_length: int) -> None:
    if ids.ndim != 1 or len(ids) != expected_length:
        raise ValueError(f"{name} must have shape ({expected_length},), got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name} must hold integers, got {ids.dtype}")


def _first_occurrences(ids: Tensor) -> Tensor:
    """Sorted positions of the first occurrence of each distinct id."""
    _, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((int(inverse.max()) + 1,), len(ids), device=ids.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first.sort().values


def _deduplicated_images(embeddings: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    if len(ids) == 0:
        raise ValueError("no images were given to retrieve")
    keep = _first_occurrences(ids)
    return embeddings[keep], ids[keep]


def _deduplicated_texts(embeddings: Tensor, image_ids: Tensor, text_ids: Tensor) -> tuple[Tensor, Tensor]:
    named = (text_ids != NO_TEXT_ID).nonzero().squeeze(1)
    unnamed = (text_ids == NO_TEXT_ID).nonzero().squeeze(1)
    if len(named):
        named = named[_first_occurrences(text_ids[named])]
    keep = torch.cat([named, unnamed]).sort().values
    return embeddings[keep], image_ids[keep]


def _image_index_of_each_text(image_ids: Tensor, text_image_ids: Tensor) -> Tensor:
    """Row of `image_ids` that each caption belongs to; every caption's image must be present."""
    sorted_ids, order = image_ids.sort()
    position = torch.searchsorted(sorted_ids, text_image_ids).clamp(max=len(sorted_ids) - 1)
    found = sorted_ids[position] == text_image_ids
    if not found.all():
        missing = text_image_ids[~found].unique()[:10].tolist()
        raise ValueError(f"captions refer to image ids that were never given as images: {missing}")
    return order[position]
