"""A task: what one objective adds to the shared MaMMUT, given the model rather than inheriting it.

MaMMUT's point is one set of weights serving several tasks (arXiv 2303.16839, Sec. 3.4). A
``Task`` holds a task's own parameters (a light head, a PEFT prefix), its loss, metrics,
TensorBoard samples and prediction output; ``MammutModule`` holds the shared model and a
dict of tasks, and writes once what every task needs: the training step, the guard for a
rank whose samples were all bad, the non-finite check, skip counting, the report table with
baselines and the metric names ``{stage}/{task}/{metric}``.

A task declares what the shared machinery must know instead of the machinery guessing:
what it needs from its data (``inputs_type``, a ``TaskInputs`` dataclass), the empty batch a
rank with no good samples feeds through the model, which of its parameters take no weight
decay, its FSDP entry points and how its parameters were named before tasks were components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

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
class TaskInputs:
    """What a task needs from its data, handed over once before any step. A task declares its
    own subclass (``Task.inputs_type``) and its data module builds it (``task_inputs``)."""

    # One sample's model input, (3, H, W) for images or (3, T, H, W) for clips: the shape of the
    # empty batch that a rank whose samples were all bad feeds through the model.
    input_shape: tuple[int, ...]


@dataclass
class TaskContext:
    """What the shared module hands each task once, before any step."""

    architecture: MammutConfig
    generation: GenerationConfig
    inputs: TaskInputs
    tokenizer: CaptionTokenizer | None = None
    # Where the task may write files of its own (a detection results JSON, drawn predictions):
    # the run's log folder; None when the run has none.
    output_dir: Path | None = None


class Task(nn.Module):
    """Base of every task. Subclasses implement ``loss``, ``evaluate``, ``report`` and ``empty_batch``."""

    inputs_type: ClassVar[type[TaskInputs]] = TaskInputs  # what the task needs from its data

    def __init__(self):
        super().__init__()
        self.context: TaskContext | None = None

    def build(self, architecture: MammutConfig) -> None:
        """Create the task's own modules for this architecture (a head, a prefix). Called once,
        before weights are loaded and parameters frozen, so that both see them."""

    def connect(self, context: TaskContext) -> None:
        """Receive the tokenizer and the data's typed inputs before any step."""
        self.context = context

    @property
    def inputs(self) -> TaskInputs:
        return self.context.inputs

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
        """Zero images, or zero clips when the task's data is video, so that the empty batch runs
        the same encoder path as the others' batches."""
        return torch.zeros(0, *self.inputs.input_shape, device=device)

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

    def end_prediction(self) -> None:
        """After the last batch of ``mammut predict``, on every rank: write what the run
        collected as a whole (detection's pseudo-label file)."""

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


def check_task_names(data, tasks: list[str]) -> list[str]:
    """The task of each evaluation loader: the data's task names, which must be the model's."""
    names = getattr(data, "task_names", None)
    if names is None:
        if data is not None and hasattr(data, "task_inputs") and len(tasks) != 1:
            raise ValueError(f"the model has the tasks {tasks}, but {type(data).__name__} feeds one: use "
                             "mammut.tasks.joint_data.JointDataModule with a data module per task")
        return tasks
    if sorted(names) != sorted(tasks):
        raise ValueError(f"the data's tasks {list(names)} are not the model's {tasks}: data.tasks and "
                         "model.tasks must name the same tasks")
    return list(names)


def eval_loader_tasks(data, names: list[str], stage: str) -> list[str]:
    """The task of each evaluation loader of ``stage`` ("val" or "test"), in order. A task's data
    module may run several (``num_eval_loaders``: pretraining's captions, then its zero-shot
    classification sets); a joint one names the task of each of its loaders (``eval_loader_tasks``)."""
    if hasattr(data, "eval_loader_tasks"):
        return data.eval_loader_tasks(stage)
    if hasattr(data, "num_eval_loaders") and len(names) == 1:
        return names * data.num_eval_loaders(stage)
    return names


def task_inputs(data, name: str, task: Task, architecture: MammutConfig) -> TaskInputs:
    """What the data gives task ``name``, checked to be what the task needs (its ``inputs_type``).
    A data module that is not a ``TaskDataModule`` gives the images' input shape only."""
    inputs = data.task_inputs(name) if hasattr(data, "task_inputs") else \
        TaskInputs(input_shape=(3, architecture.image_size, architecture.image_size))
    if not isinstance(inputs, task.inputs_type):
        raise TypeError(f"task {name!r} ({type(task).__name__}) needs {task.inputs_type.__name__} from its data, but "
                        f"{type(data).__name__} gives {type(inputs).__name__}: is data.class_path this task's data module?")
    return inputs
