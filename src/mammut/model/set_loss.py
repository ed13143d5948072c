"""The set-based detection loss: Hungarian matching, then sigmoid focal, L1 and GIoU losses.

DETR (Carion et al., arXiv 2005.12872, Sec. 3.1) matches predictions to objects one to one by
the assignment of least total cost, and trains each matched prediction towards its object and
every other one towards "no object". The classification term is the sigmoid focal loss, as in
Deformable DETR and OWL-ViT (Minderer et al., arXiv 2205.06230, Sec. A1.2), whose published
weights are the defaults here: focal 2 (alpha 0.25, gamma 2), L1 5, GIoU 2.

Not every class is known at every image. Under LVIS's federated annotation a class counts at an
image only if it is there (and boxed) or verified absent; ``known`` (B, K) says which, and the
classification loss skips the rest. So do predictions that are not matched but whose centre lies
in a crowd region: the crowd is neither an object to find nor background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss


@dataclass
class SetLossWeights:
    focal: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def focal_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """(N, M): the focal loss of calling each prediction its target's class, less that of not
    calling it so (Deformable DETR's matching cost)."""
    p = logits.sigmoid()[:, labels]
    eps = 1e-8
    positive = alpha * (1 - p) ** gamma * -(p + eps).log()
    negative = (1 - alpha) * p ** gamma * -(1 - p + eps).log()
    return positive - negative


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes: Tensor, labels: Tensor, targets: Tensor,
                    weights: SetLossWeights) -> tuple[Tensor, Tensor]:
    """One image's one-to-one assignment of predictions to targets of least total cost.

    logits: (N, K); boxes: (N, 4) cx, cy, w, h; labels: (M,) class indices; targets: (M, 4).
    Returns the matched prediction indices and their target indices, each (min(N, M),).
    """
    if len(labels) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return empty, empty
    logits, boxes, targets = logits.float(), boxes.float(), targets.float()
    cost = (weights.focal * focal_cost(logits, labels, weights.focal_alpha, weights.focal_gamma)
            + weights.l1 * torch.cdist(boxes, targets, p=1)
            - weights.giou * generalized_box_iou(xyxy(boxes), xyxy(targets)))
    rows, columns = linear_sum_assignment(cost.cpu().numpy())
    device = logits.device
    return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(columns, dtype=torch.long,
                                                                                   device=device)


def in_crowd(boxes: Tensor, crowd: Tensor) -> Tensor:
    """(N,) bool: the box's centre lies in one of the crowd regions (C, 4), all cx, cy, w, h."""
    if len(crowd) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    regions = xyxy(crowd)
    cx, cy = boxes[:, None, 0], boxes[:, None, 1]
    inside = (cx >= regions[:, 0]) & (cx <= regions[:, 2]) & (cy >= regions[:, 1]) & (cy <= regions[:, 3])
    return inside.any(dim=1)


def set_loss(logits: Tensor, boxes: Tensor, labels: list[Tensor], targets: list[Tensor], known: Tensor,
             crowd: list[Tensor], weights: SetLossWeights, num_boxes: float) -> dict[str, Tensor]:
    """The unweighted focal, L1 and GIoU losses of a batch, and their weighted sum ("total").

    logits: (B, N, K); boxes: (B, N, 4); per image, labels (M_i,), targets (M_i, 4) and crowd
    regions (C_i, 4); known: (B, K) bool. Each loss is a sum over the batch divided by
    ``num_boxes``, the number of target boxes (over every rank, as DETR normalises).
    """
    logits, boxes = logits.float(), boxes.float()
    one_hot = torch.zeros_like(logits)
    counted = known[:, None, :].expand_as(logits).clone()
    matched_boxes, matched_targets = [], []
    for i in range(len(logits)):
        rows, columns = hungarian_match(logits[i], boxes[i], labels[i], targets[i], weights)
        one_hot[i, rows, labels[i][columns]] = 1
        counted[i, rows, labels[i][columns]] = True  # a matched box counts even for a not-exhaustive class
        unmatched = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
        unmatched[rows] = False
        counted[i, unmatched & in_crowd(boxes[i].detach(), crowd[i])] = False
        matched_boxes.append(boxes[i, rows])
        matched_targets.append(targets[i][columns].float())
    focal = sigmoid_focal_loss(logits, one_hot, weights.focal_alpha, weights.focal_gamma, reduction="none")
    focal = (focal * counted).sum() / num_boxes
    predicted, target = torch.cat(matched_boxes), torch.cat(matched_targets)
    l1 = (predicted - target).abs().sum() / num_boxes
    giou = (1 - torch.diag(generalized_box_iou(xyxy(predicted), xyxy(target)))).sum() / num_boxes
    total = weights.focal * focal + weights.l1 * l1 + weights.giou * giou
    return {"total": total, "focal": focal, "l1": l1, "giou": giou}
