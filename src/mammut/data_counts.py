"""Bad samples skipped and texts cut to fit, counted over a whole run and logged, never hidden.

``data/skipped_samples`` counts every skip of the run: the samples that training and evaluation
steps dropped, each time one meets them (kept in checkpoints), plus the records the readers
dropped from each split whose loop has run (once per run: a resumed run reads the files again).
``data/truncated_texts`` counts texts cut to the context length; the first one is named in the log.
Both are totals over the ranks of a distributed run.
The sanity check's batches are not counted: the first validation meets them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class DataCounts:
    """Args: records_dropped: per split, the records the data's readers dropped (read once, at set-up)."""

    def __init__(self, records_dropped: dict[str, int] | None = None):
        self.records_dropped = dict(records_dropped or {})
        self.skipped_samples = 0
        self.truncated_texts = 0
        self.records_skipped: dict[str, int] = {}  # of the splits whose loop has run

    def add(self, num_skipped: int, truncated: list[str], split: str) -> None:
        """Take in a batch's skipped samples and cut texts, met in the loop over ``split``."""
        # Assigned, not added: a split counts once however many epochs it runs.
        self.records_skipped[split] = self.records_dropped.get(split, 0)
        self.skipped_samples += num_skipped
        if num_skipped:
            log.warning("skipped %d bad samples so far", self.skipped)
        if truncated and not self.truncated_texts:
            log.warning("%s; texts cut to fit are counted in data/truncated_texts", truncated[0])
        self.truncated_texts += len(truncated)

    @property
    def skipped(self) -> int:
        return self.skipped_samples + sum(self.records_skipped.values())

    def metrics(self, sum_over_ranks: Callable[[Tensor], Tensor] = lambda counts: counts) -> dict[str, float]:
        """The run's totals: the samples skipped and texts cut on every rank (each rank meets its own
        share of the data; ``sum_over_ranks`` adds them up), and the records the readers dropped,
        which every rank reads alike, once."""
        met = sum_over_ranks(torch.tensor([float(self.skipped_samples), float(self.truncated_texts)]))
        return {"data/skipped_samples": float(met[0]) + sum(self.records_skipped.values()),
                "data/truncated_texts": float(met[1])}

    # Top-level checkpoint keys, as checkpoints have always held them.
    def state_dict(self) -> dict[str, int]:
        return {"skipped_samples": self.skipped_samples, "truncated_texts": self.truncated_texts}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        self.truncated_texts = checkpoint.get("truncated_texts", 0)
