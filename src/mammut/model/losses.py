"""The two pretraining losses of MaMMUT (arXiv 2303.16839, Sec. 3.3): contrastive and captioning."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows of ``x``, concatenated in rank order, and the index where this rank's rows start.

    Ranks may hold different numbers of rows (a batch that lost bad samples, or lost them
    all): the rows are padded to the longest for the collective and cut back afterwards.
    In the backward pass each rank receives the gradient of its own rows summed over all
    ranks' losses (an all-to-all), so data-parallel gradient averaging yields the gradient of
    the global loss.
    """
    if _world_size() == 1:
        return x, 0
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(count) for _ in range(_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = F.pad(x, (0, 0, 0, max(counts) - x.shape[0]))
    rows = torch.cat([part[:n] for part, n in zip(dist_nn.all_gather(padded), counts)])
    return rows, sum(counts[:dist.get_rank()])


class ContrastiveLoss(nn.Module):
    """Image-text contrastive loss over the global batch.

    ``kind="infonce"``: symmetric softmax cross-entropy, as in CLIP.
    ``kind="focal"``: the focal contrastive loss MaMMUT takes from RO-ViT (arXiv 2305.07011,
    Sec. 3.3): a sigmoid per image-text pair, down-weighting easy pairs by (1 - p_t)^gamma.

    Under data parallelism the embeddings of every rank are gathered, so each image is
    contrasted with every text of the global batch, N pairs in all. With ``local_loss=False``
    every rank computes the whole N x N loss; with ``local_loss=True`` (open_clip's option) a
    rank computes only the rows of its own images and texts (n x N logits instead of N x N)
    and returns its share of the global loss, scaled so that the mean over ranks is the
    global loss. Either way, after data-parallel gradient averaging (DDP, FSDP) the gradients
    equal those of one process on the concatenated batch.
    """

    def __init__(self, kind: str = "infonce", focal_gamma: float = 2.0, local_loss: bool = False):
        super().__init__()
        if kind not in ("infonce", "focal"):
            raise ValueError(f"contrastive loss kind must be 'infonce' or 'focal', got {kind!r}")
        self.kind = kind
        self.focal_gamma = focal_gamma
        self.local_loss = local_loss

    def forward(self, image_embedding: Tensor, text_embedding: Tensor, logit_scale: Tensor) -> Tensor:
        # One collective for both embeddings: they are gathered side by side.
        pairs, start = gather_with_grad(torch.cat([image_embedding, text_embedding], dim=-1))
        all_images, all_texts = pairs.split(image_embedding.shape[-1], dim=-1)  # (N, E) each
        total = max(pairs.shape[0], 1)
        if self.local_loss:
            image_logits = logit_scale * image_embedding @ all_texts.T  # (n, N)
            text_logits = logit_scale * text_embedding @ all_images.T   # (n, N)
            labels = torch.arange(start, start + image_embedding.shape[0], device=pairs.device)
            normaliser = total / _world_size()
        else:
            image_logits = logit_scale * all_images @ all_texts.T  # (N, N)
            text_logits = image_logits.T
            labels = torch.arange(pairs.shape[0], device=pairs.device)
            normaliser = total
        summed = self._summed_loss(image_logits, labels) + self._summed_loss(text_logits, labels)
        return summed / (2 * normaliser)

    def _summed_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss of each row of ``logits`` (whose positive is at ``labels``), summed over rows."""
        logits = logits.float()
        if self.kind == "infonce":
            return F.cross_entropy(logits, labels, reduction="sum")
        # RO-ViT Eq. 2, before its 1/B: sum_ij (1 - p_t)^gamma (-log p_t), p_t = sigmoid(+-logit).
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[torch.arange(logits.shape[0], device=logits.device), labels] = True
        log_p = F.logsigmoid(torch.where(positive, logits, -logits))
        return (-((1 - log_p.exp()) ** self.focal_gamma) * log_p).sum()


def caption_loss(logits: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Next-token cross-entropy. logits (B, T, V) predict targets (B, T); padding is ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id,
                           label_smoothing=label_smoothing)


def chunked_caption_loss(hidden: Tensor, head: nn.Module, targets: Tensor, ignore_index: int,
                         label_smoothing: float = 0.0, chunk_tokens: int = 2048) -> Tensor:
    """``caption_loss`` of ``head(hidden)`` without ever building the whole (B, T, V) logits.

    hidden (B, T, C): the decoder's final hidden states; head: the vocabulary projection
    (``decoder.lm_head``, LoRA-wrapped or not); targets (B, T). Positions whose target is
    ``ignore_index`` are dropped first, then the logits of ``chunk_tokens`` positions at a time are
    built, scored and freed. The mean over the kept positions, with label smoothing, is
    ``F.cross_entropy``'s, and so are the gradients (``LossWithGradientsInForward``): peak memory is
    one chunk's logits instead of all of them, and nothing is recomputed. With no position to score
    the loss is zero, joined to the graph.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    keep = (targets != ignore_index).flatten()
    kept_hidden = hidden.flatten(0, 1)[keep]
    kept_targets = targets.flatten()[keep]
    if not len(kept_targets):
        return hidden.sum() * 0.0
    parameters = [p for p in head.parameters() if p.requires_grad]
    if torch.is_grad_enabled() and (kept_hidden.requires_grad or parameters):
        return LossWithGradientsInForward.apply(kept_hidden, kept_targets, head, label_smoothing, chunk_tokens,
                                                *parameters)
    total = sum(F.cross_entropy(head(part).float(), target, reduction="sum", label_smoothing=label_smoothing)
                for part, target in zip(kept_hidden.split(chunk_tokens), kept_targets.split(chunk_tokens)))
    return total / len(kept_targets)


class LossWithGradientsInForward(torch.autograd.Function):
    """The mean cross-entropy of ``head(hidden)`` against ``targets``, chunk by chunk, each chunk's
    gradients (for ``hidden`` and the head's parameters) taken while its logits exist.

    The gradients are kept for ``backward``, which only scales them by the incoming gradient. This
    is the fused linear cross-entropy of Liger Kernel and open_clip's main branch, written with
    autograd rather than by hand, so that any head works (a tied, LoRA-wrapped or sharded weight)
    and autocast applies as in the forward of the full logits.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, targets: Tensor, head: nn.Module, label_smoothing: float, chunk_tokens: int,
                *parameters: Tensor) -> Tensor:
        wants = [hidden.requires_grad] + [p.requires_grad for p in parameters]
        hidden_grad = torch.zeros_like(hidden) if hidden.requires_grad else None
        parameter_grads = [torch.zeros_like(p, dtype=torch.float32) for p in parameters]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, len(targets), chunk_tokens):
            part = hidden[start:start + chunk_tokens].detach().requires_grad_(wants[0])
            with torch.enable_grad():
                loss = F.cross_entropy(head(part).float(), targets[start:start + chunk_tokens], reduction="sum",
                                       label_smoothing=label_smoothing)
            inputs = ([part] if wants[0] else []) + list(parameters)
            grads = list(torch.autograd.grad(loss, inputs))
            if wants[0]:
                hidden_grad[start:start + chunk_tokens] = grads.pop(0)
            for accumulated, grad in zip(parameter_grads, grads):
                accumulated += grad
            total += loss.detach()
        scale = 1.0 / len(targets)
        ctx.save_for_backward(*([] if hidden_grad is None else [hidden_grad]), *parameter_grads)
        ctx.has_hidden_grad = hidden_grad is not None
        ctx.scale = scale
        ctx.parameter_dtypes = [p.dtype for p in parameters]
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        saved = list(ctx.saved_tensors)
        factor = grad_output * ctx.scale
        hidden_grad = saved.pop(0) if ctx.has_hidden_grad else None
        if hidden_grad is not None:
            hidden_grad = hidden_grad * factor.to(hidden_grad.dtype)
        parameter_grads = [(grad * factor).to(dtype) for grad, dtype in zip(saved, ctx.parameter_dtypes)]
        return (hidden_grad, None, None, None, None, *parameter_grads)
