"""The two pretraining losses of MaMMUT (arXiv 2303.16839, Sec. 3.3): contrastive and captioning."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' rows, concatenated in rank order; gradients flow back to each rank's own rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ContrastiveLoss(nn.Module):
    """Image-text contrastive loss over the global batch.

    ``kind="infonce"``: symmetric softmax cross-entropy, as in CLIP.
    ``kind="focal"``: the focal contrastive loss MaMMUT takes from RO-ViT (arXiv 2305.07011,
    Sec. 3.3): a sigmoid per image-text pair, down-weighting easy pairs by (1 - p_t)^gamma.

    Under data parallelism the embeddings of every rank are gathered, so each image is
    contrasted with every text of the global batch. ``local_loss=True`` computes only the
    rows of this rank's images and texts against all others (open_clip's option), which
    gives the same gradients at a fraction of the logits' memory.
    """

    def __init__(self, kind: str = "infonce", focal_gamma: float = 2.0, local_loss: bool = False):
        super().__init__()
        if kind not in ("infonce", "focal"):
            raise ValueError(f"contrastive loss kind must be 'infonce' or 'focal', got {kind!r}")
        self.kind = kind
        self.focal_gamma = focal_gamma
        self.local_loss = local_loss

    def forward(self, image_embedding: Tensor, text_embedding: Tensor, logit_scale: Tensor) -> Tensor:
        all_images = gather_with_grad(image_embedding)
        all_texts = gather_with_grad(text_embedding)
        if self.local_loss:
            offset = _rank() * image_embedding.shape[0]
            image_logits = logit_scale * image_embedding @ all_texts.T  # (b, B)
            text_logits = logit_scale * text_embedding @ all_images.T   # (b, B)
        else:
            offset = 0
            image_logits = logit_scale * all_images @ all_texts.T  # (B, B)
            text_logits = image_logits.T
        labels = torch.arange(image_logits.shape[0], device=image_logits.device) + offset
        if self.kind == "infonce":
            return (F.cross_entropy(image_logits.float(), labels) + F.cross_entropy(text_logits.float(), labels)) / 2
        return (self._focal(image_logits, labels) + self._focal(text_logits, labels)) / 2

    def _focal(self, logits: Tensor, labels: Tensor) -> Tensor:
        """RO-ViT Eq. 2: -(1/B) sum_ij (1 - p_t)^gamma log p_t, p_t = sigmoid(+-logit)."""
        logits = logits.float()
        targets = torch.zeros_like(logits)
        targets[torch.arange(logits.shape[0], device=logits.device), labels] = 1.0
        log_p = F.logsigmoid(torch.where(targets.bool(), logits, -logits))
        loss = -((1 - log_p.exp()) ** self.focal_gamma) * log_p
        return loss.sum() / logits.shape[0]


def caption_loss(logits: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Next-token cross-entropy. logits (B, T, V) predict targets (B, T); padding is ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id,
                           label_smoothing=label_smoothing)
