"""What every task's LightningDataModule shares.

- Paths resolved against one data root, and the tokenizer the model is sized for
  (``vocab_size`` and ``special_token_ids`` are linked to the model by the CLI).
- Image size and context length taken from the model's architecture unless set here.
- A training loader that resumes mid-epoch: the checkpoint records how many batches of
  the epoch were done, and the sampler skips them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mammut.data import CaptionTokenizer
from mammut.data.sampling import ResumableRandomSampler

log = logging.getLogger(__name__)


class TaskDataModule(L.LightningDataModule):
    """Subclasses call ``save_hyperparameters()`` with at least ``batch_size``,
    ``eval_batch_size``, ``num_workers`` and ``seed`` among their arguments."""

    def __init__(self, root: str, tokenizer: str, image_size: int | None, context_length: int | None):
        super().__init__()
        self.root = Path(root)
        self.tokenizer = CaptionTokenizer.from_file(self.path(tokenizer))
        self.image_size, self.context_length = image_size, context_length
        self.resume_point = (0, 0)  # (epoch, batches done in it), restored from a checkpoint
        self.datasets: dict[str, Dataset] = {}

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_token_ids(self) -> dict[str, int]:
        return self.tokenizer.special_token_ids

    def shape_for_model(self) -> None:
        """Images and token sequences are shaped for the model unless set here explicitly."""
        architecture = getattr(self.trainer.lightning_module, "architecture", None) if self.trainer else None
        for name in ("image_size", "context_length"):
            model_value = getattr(architecture, name, None)
            if getattr(self, name) is None:
                if model_value is None:
                    raise ValueError(f"data.{name} is not set and the model does not define it")
                setattr(self, name, model_value)
            elif model_value is not None and getattr(self, name) != model_value:
                raise ValueError(f"data.{name}={getattr(self, name)} but the model's architecture.{name}={model_value}")

    def train_loader(self, dataset: Dataset, collate_fn: Callable) -> DataLoader:
        h = self.hparams
        sampler = ResumableRandomSampler(len(dataset), h.seed, on_epoch=getattr(dataset, "set_epoch", None))
        epoch, batches_done = self.resume_point
        if 0 < batches_done < len(dataset) // h.batch_size:
            sampler.resume(epoch, batches_done * h.batch_size)
            log.info("resuming epoch %d after %d batches", epoch, batches_done)
        # drop_last keeps every batch the same size (for a contrastive loss, the same negatives).
        return DataLoader(dataset, batch_size=h.batch_size, sampler=sampler, drop_last=True,
                          num_workers=h.num_workers, collate_fn=collate_fn)

    def eval_loader(self, dataset: Dataset, collate_fn: Callable) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=collate_fn)

    # Mid-epoch resume: remember how many batches of this epoch the model has seen.
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self.resume_point = (state.get("epoch", 0), state.get("batches_done", 0))
