"""Open-vocabulary detection heads on the visual tokens (MaMMUT Sec. 3.4, after OWL-ViT).

OWL-ViT (Minderer et al., arXiv 2205.06230, Sec. 3.1) drops the encoder's pooling and puts two
light heads on every output token: an MLP that predicts a box, and a class embedding that is
scored against text embeddings instead of a fixed classifier. Classes are therefore text, and a
class that never had a box in training is found by its name alone.

- Boxes: each token's box is the MLP's output plus a bias from the token's place on the patch
  grid (its cell's centre and size, through the inverse sigmoid), so an untrained head already
  predicts the cell it sits on and learning only moves boxes from there (OWL-ViT Sec. A1.2).
- Classes: each token is mapped into the contrastive embedding space by the model's own image
  projection, the one pretraining aligned with the text embeddings, and scored by cosine
  similarity against the queries (the text embeddings of the class names), then shifted and
  scaled per token by two learned linear maps (OWL-ViT's logit shift and scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The initial score of every token and class: sigmoid(-4.6) = 0.01, RetinaNet's prior (Lin et al.
# 2017, Sec. 4.1), so that the many background tokens do not swamp the focal loss at the start.
PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)
INITIAL_SCALE = 10.0  # cosine similarities in [-1, 1], times this, span the useful sigmoid range


@dataclass
class Detections:
    boxes: Tensor   # (B, N, 4) cx, cy, w, h as fractions of the image
    logits: Tensor  # (B, N, K) per token and query class


class DetectionHead(nn.Module):
    def __init__(self, vision_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(vision_width)
        self.box_mlp = nn.Sequential(
            nn.Linear(vision_width, vision_width), nn.GELU(),
            nn.Linear(vision_width, vision_width), nn.GELU(),
            nn.Linear(vision_width, 4))
        # Zero at the start: every box is its token's grid cell.
        nn.init.zeros_(self.box_mlp[-1].weight)
        nn.init.zeros_(self.box_mlp[-1].bias)
        self.logit_shift = nn.Linear(vision_width, 1)
        self.logit_scale = nn.Linear(vision_width, 1)
        for layer in (self.logit_shift, self.logit_scale):
            nn.init.normal_(layer.weight, std=1e-3)
        # (cos + shift) * scale = PRIOR_LOGIT at cos = 0; elu(b) + 1 = INITIAL_SCALE.
        nn.init.constant_(self.logit_shift.bias, PRIOR_LOGIT / INITIAL_SCALE)
        nn.init.constant_(self.logit_scale.bias, INITIAL_SCALE - 1)

    def forward(self, patch_tokens: Tensor, grid: tuple[int, int], projection: Callable[[Tensor], Tensor],
                queries: Tensor) -> Detections:
        """patch_tokens: (B, N = rows * columns, C) in row-major grid order; projection: the
        model's image projection (C -> E, ``Mammut.project_tokens``); queries: (K, E) unit-norm
        class embeddings."""
        x = self.norm(patch_tokens)
        boxes = torch.sigmoid(self.box_mlp(x) + grid_box_bias(*grid, device=x.device, dtype=x.dtype))
        embeddings = F.normalize(projection(x), dim=-1)
        similarity = embeddings @ queries.to(embeddings.dtype).T  # (B, N, K)
        scale = F.elu(self.logit_scale(x)) + 1  # positive
        return Detections(boxes=boxes, logits=(similarity + self.logit_shift(x)) * scale)


def grid_box_bias(rows: int, columns: int, device=None, dtype=None) -> Tensor:
    """(rows * columns, 4): the inverse sigmoid of each grid cell's box (centre, width, height)."""
    cy, cx = torch.meshgrid((torch.arange(rows, device=device) + 0.5) / rows,
                            (torch.arange(columns, device=device) + 0.5) / columns, indexing="ij")
    cells = torch.stack([cx, cy, torch.full_like(cx, 1 / columns), torch.full_like(cy, 1 / rows)], dim=-1)
    return torch.logit(cells.flatten(0, 1)).to(dtype)
