"""Which vocabulary rows training has met, and a fresh start for the rows it never met.

With the output projection tied to the token embedding (the demo model), a token that never
appears in the training text still gets a gradient at every step: the softmax pushes its logit
down, along the mean hidden state. Every such row moves the same way, so after pretraining
they are nearly one vector (after `make pretrain`, the 481 of the demo's 549 rows that its
captions never use have a mean pairwise cosine of 0.93, against 0.01 for the rows they use). A task
whose text uses them (VQA: "yes", "no", the numbers, "how many", "what color") starts from
question words it cannot tell apart and answer words it is trained never to say.

``TokenUse`` counts, in the model's own state, how often each token was in a training sequence
(every rank's, summed), so that a checkpoint says which rows training met. ``restart_unmet_rows``
then gives the rows a checkpoint's training never met a new start when a model is initialised
from it: the mean of the rows it met plus noise of their spread per dimension, Hewitt's
initialisation of new word embeddings ("Initializing New Word Embeddings for Pretrained Language
Models", 2021): the new words' logits start at the average word's instead of far below it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

NOT_RECORDED = -1  # the counts of a file written before they were kept: which rows were met is unknown


class TokenUse(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.register_buffer("counts", torch.zeros(vocab_size, dtype=torch.long))

    @property
    def recorded(self) -> bool:
        return bool((self.counts >= 0).all())

    def forget(self) -> None:
        """Weights came from a file that did not count: which rows they met is unknown from here on."""
        self.counts.fill_(NOT_RECORDED)

    @torch.no_grad()
    def add(self, batches: list[Tensor], all_ranks: Callable[[Tensor], Tensor] = lambda counts: counts) -> None:
        """Count one training step's token sequences. ``all_ranks`` sums the counts over the ranks
        (once per step, on every rank, whatever its batches), so that every rank holds the same
        counts (DDP broadcasts buffers from rank 0)."""
        counts = torch.zeros_like(self.counts)
        for tokens in batches:
            counts += torch.bincount(tokens.flatten().to(counts.device), minlength=counts.numel())
        counts = all_ranks(counts)
        if self.recorded:
            self.counts += counts

    def met(self) -> Tensor:
        """(vocab_size,) bool: the rows training met; all True when that is unknown."""
        return self.counts != 0


@torch.no_grad()
def restart_unmet_rows(embedding: Tensor, met: Tensor, generator: torch.Generator | None = None) -> int:
    """Rows of ``embedding`` (vocab_size, width) that ``met`` marks False restart at the met rows'
    mean plus Gaussian noise of their standard deviation per dimension. Returns how many."""
    unmet = ~met.to(embedding.device)
    count = int(unmet.sum())
    if count == 0 or int(met.sum()) < 2:
        return 0
    rows = embedding[~unmet].float()
    noise = torch.randn(count, embedding.shape[1], generator=generator, device="cpu").to(embedding.device)
    embedding[unmet] = (rows.mean(0) + rows.std(0) * noise).to(embedding.dtype)
    return count
