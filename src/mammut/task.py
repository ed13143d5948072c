"""A task: what one objective adds to the shared MaMMUT, given the model rather than inheriting it.

MaMMUT's point is one set of weights serving several tasks (arXiv 2303.16839, Sec. 3.4). A
``Task`` holds a task's own parameters (a light head, a PEFT prefix), its loss, metrics,
TensorBoard samples and prediction output; ``MammutModule`` holds the shared model and a
dict of tasks, and writes once what every task needs: the training step, the guard for a
rank whose samples were all bad, the non-finite check, skip counting, the report table with
baselines and the metric names ``{stage}/{task}/{metric}``.

A task declares what the shared machinery must know instead of the machinery guessing:
the empty batch a rank with no good samples feeds through the model, which of its
parameters take no weight decay, its FSDP entry points and how its parameters were named
before tasks were components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mammut.data.batch import Batch
from mammut.data.tokenizer import CaptionTokenizer
from mammut.model import GenerationConfig, Mammut, MammutConfig


@dataclass
class TaskLoss:
    """A training step's loss and its named parts (logged as ``train/{task}/{part}``)."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TaskReport:
    """An evaluation's scores, each beside the baseline of the same name where there is one."""

    scores: dict[str, float]
    baselines: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # examples behind a score, for the table
    samples: tuple[Tensor, list[str]] | None = None  # images (B, 3, H, W) or clips (B, 3, T, H, W) in [0, 1], texts


@dataclass
class TaskContext:
    """What the shared module hands each task once, before any step."""

    architecture: MammutConfig
    generation: GenerationConfig
    tokenizer: CaptionTokenizer | None = None
    # What the task's data side knows that its baselines and predictions need (the training
    # captions, the majority answers, ...); its keys are the task's own.
    references: dict = field(default_factory=dict)
    # Where the task may write files of its own (a detection results JSON, drawn predictions):
    # the run's log folder; None when the run has none.
    output_dir: Path | None = None


class Task(nn.Module):
    """Base of every task. Subclasses implement ``loss``, ``evaluate``, ``report`` and ``empty_batch``."""

    def __init__(self):
        super().__init__()
        self.context: TaskContext | None = None

    def build(self, architecture: MammutConfig) -> None:
        """Create the task's own modules for this architecture (a head, a prefix). Called once,
        before weights are loaded and parameters frozen, so that both see them."""

    def connect(self, context: TaskContext) -> None:
        """Receive the tokenizer and the data's references before any step."""
        self.context = context

    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self.context is None or self.context.tokenizer is None:
            raise RuntimeError(f"{type(self).__name__} has no tokenizer: the module connects it to its data first")
        return self.context.tokenizer

    # ------------------------------------------------------------- training
    def loss(self, model: Mammut, batch: Batch) -> TaskLoss:
        """The training loss of a batch. On an empty batch (see ``empty_batch``) it must still
        run the model, so that a rank whose samples were all bad joins the others' collectives,
        and return a zero joined to the graph."""
        raise NotImplementedError

    def empty_batch(self, device) -> Batch:
        """A batch of zero samples with the model's shapes, for that rank."""
        raise NotImplementedError

    def empty_inputs(self, device) -> Tensor:
        """Zero images, or zero clips when the task's data is video (its references give the
        ``input_shape``), so that the empty batch runs the same encoder path as the others' batches."""
        c = self.context.architecture
        shape = self.context.references.get("input_shape") or (3, c.image_size, c.image_size)
        return torch.zeros(0, *shape, device=device)

    # ----------------------------------------------------------- evaluation
    def evaluate(self, model: Mammut, batch: Batch, stage: str, batch_idx: int) -> None:
        """Update the metrics of ``stage`` ("val" or "test") with a batch."""
        raise NotImplementedError

    def report(self, stage: str) -> TaskReport | None:
        """The scores of the whole evaluation set (every rank's part), then reset for the next."""
        raise NotImplementedError

    def reset(self, stage: str) -> None:
        """Forget a stage's evaluation (after the sanity check)."""
        raise NotImplementedError

    def predict(self, model: Mammut, batch) -> list[dict]:
        raise NotImplementedError(f"{type(self).__name__} has no prediction output")

    def format_prediction(self, prediction: dict) -> str:
        """A prediction as one line of text, printed by ``mammut predict``."""
        return "\t".join(str(value) for value in prediction.values())

    # ------------------------------------------- what the shared parts must know
    def no_weight_decay(self) -> set[str]:
        """Names (relative to this task) of parameters that take no weight decay: by default
        those with fewer than two dimensions (norm scales, biases)."""
        return {name for name, parameter in self.named_parameters() if parameter.ndim < 2}

    def fsdp_entry_points(self) -> dict[nn.Module, list[str]]:
        """Modules of this task whose methods other than ``forward`` evaluation calls first."""
        return {}

    def legacy_keys(self) -> dict[str, str]:
        """Checkpoint key prefixes of a task-specific LightningModule (before tasks were
        components) -> their names relative to this task, e.g. ``{"prefix.": "prefix."}``."""
        return {}
