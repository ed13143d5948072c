"""Pseudo-boxes from captions: the data of self-training (OWL-ST, Minderer et al. 2023, arXiv 2306.09683).

A detector looks, in each captioned image, for the queries its captions give
(``mammut.data.caption_queries``); each predicted box takes its best-scoring query of that image,
and is kept when it scores at least ``box_threshold``, in an image whose best box scores at least
``image_threshold`` (OWL-ST Sec. 4.4: 0.1 and 0.3; images below are left out). The result is an
LVIS v1 file, so the detection reader trains on it as it is:

- ``categories``: every query that boxed something, with LVIS's ``frequency`` by the number of
  images it boxed (r: 1 to 10, c: 11 to 100, f: more);
- ``annotations``: the kept boxes, each with its ``score``;
- per image, ``not_exhaustive_category_ids``: its own queries (a caption names a thing, not how
  many of it the detector found), and ``neg_category_ids``: up to ``num_negatives`` queries of
  other images whose object word none of its captions uses (OWL-ST's pseudo-negatives, drawn at
  random for a seed). A query whose object word the captions use in another phrase ("a circle"
  where another image asks for "a blue circle") says nothing, so it is neither;
- ``info.left_out_image_ids``: the images looked at that kept no box.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from mammut.data.caption_queries import head_word
from mammut.model.set_loss import xyxy


@dataclass
class PseudoLabelConfig:
    """How pseudo-boxes are kept (OWL-ST's settings as defaults)."""

    box_threshold: float = 0.1    # a box is kept at this score of its best query or more
    image_threshold: float = 0.3  # an image is kept when its best box scores this or more
    num_negatives: int = 50       # pseudo-negatives per image, drawn from other images' queries
    seed: int = 0                 # of the negatives' draw

    def __post_init__(self) -> None:
        if not 0 <= self.box_threshold <= self.image_threshold <= 1:
            raise ValueError(f"need 0 <= box_threshold <= image_threshold <= 1, got {self.box_threshold}, "
                             f"{self.image_threshold}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be 0 or more, got {self.num_negatives}")


@dataclass
class PseudoBox:
    query: int                # index into the run's queries
    box: list[float]          # [x, y, w, h] in the image's pixels
    score: float


def image_pseudo_boxes(probabilities: Tensor, boxes: Tensor, own_queries: list[int], size: tuple[int, int],
                       config: PseudoLabelConfig) -> list[PseudoBox]:
    """One image's pseudo-boxes: ``probabilities`` (N, K) of its N predicted ``boxes`` (N, 4: cx, cy,
    w, h as fractions) for every query, ``own_queries`` the indices of its captions' queries,
    ``size`` (height, width) of the image file. Best first."""
    if not own_queries:
        return []
    own = torch.tensor(own_queries, device=probabilities.device)
    scores, best = probabilities[:, own].float().max(dim=1)
    if scores.max() < config.image_threshold:
        return []
    keep = (scores >= config.box_threshold).nonzero().flatten()
    keep = keep[scores[keep].argsort(descending=True)]
    height, width = size
    corners = xyxy(boxes[keep].float()).clamp(0, 1) * torch.tensor([width, height, width, height],
                                                                    device=boxes.device)
    out = []
    for (x0, y0, x1, y1), k, score in zip(corners.tolist(), best[keep].tolist(), scores[keep].tolist()):
        if x1 - x0 >= 1 and y1 - y0 >= 1:  # at least a pixel each way, as the reader demands of a box
            out.append(PseudoBox(own_queries[k], [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                 round(score, 5)))
    return out


def lvis_frequency(image_count: int) -> str:
    """LVIS's frequency group of a category boxed in ``image_count`` training images."""
    return "r" if image_count <= 10 else "c" if image_count <= 100 else "f"


def pseudo_label_file(images: list[dict], queries: list[str], image_queries: dict[int, list[int]],
                      boxes: dict[int, list[PseudoBox]], config: PseudoLabelConfig) -> dict:
    """The LVIS v1 file of the pseudo-boxes.

    images: COCO image entries (id, file_name, width, height) of every image looked at;
    queries: the query texts; image_queries: image id -> its queries' indices;
    boxes: image id -> its pseudo-boxes (images without any are left out).
    """
    kept_images = [image for image in images if boxes.get(image["id"])]
    image_counts = Counter(q for image in kept_images for q in {b.query for b in boxes[image["id"]]})
    used = sorted(image_counts)
    category_id = {q: position + 1 for position, q in enumerate(used)}
    instance_counts = Counter(b.query for image in kept_images for b in boxes[image["id"]])
    categories = [{"id": category_id[q], "name": queries[q], "synonyms": [queries[q]],
                   "frequency": lvis_frequency(image_counts[q]), "image_count": image_counts[q],
                   "instance_count": instance_counts[q]} for q in used]
    draw = random.Random(config.seed)
    annotations, entries = [], []
    for image in kept_images:
        own = set(image_queries[image["id"]])
        own_words = {head_word(queries[q]) for q in own}
        candidates = [q for q in used if q not in own and head_word(queries[q]) not in own_words]
        negatives = sorted(draw.sample(candidates, min(config.num_negatives, len(candidates))))
        entries.append({**image, "neg_category_ids": [category_id[q] for q in negatives],
                        "not_exhaustive_category_ids": sorted(category_id[q] for q in own if q in category_id)})
        for box in boxes[image["id"]]:
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                "category_id": category_id[box.query], "bbox": box.box,
                                "area": round(box.box[2] * box.box[3], 2), "iscrowd": 0, "score": box.score})
    left_out = sorted(image["id"] for image in images if not boxes.get(image["id"]))
    info = {"description": "pseudo-boxes from captions (OWL-ST self-training)", "box_threshold": config.box_threshold,
            "image_threshold": config.image_threshold, "left_out_image_ids": left_out}
    return {"info": info,
            "images": entries, "annotations": annotations, "categories": categories}
