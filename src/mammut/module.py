"""MammutModule: the one LightningModule, holding the shared MaMMUT, a dict of tasks and the loop.

What every task needs is written here once: the training step (several tasks' losses summed
with their weights), the guard for a rank whose samples were all bad, the non-finite and
divergence checks, evaluation dispatch, the report table with baselines and the metric names
``{stage}/{task}/{metric}``. The rest is delegated, one job per object: weights in and out
(``mammut.checkpoint_hooks``, through ``mammut.model.weights``), what trains (``mammut.trained``),
the optimiser (``mammut.optimization``), sample counts (``mammut.data_counts``), compilation
and sharding (``mammut.sharding``), how a run stops (``mammut.stopping``). A task
(``mammut.task.Task``) brings its head, loss, metrics and samples; ``tasks/<name>/preset.py``
offers a thin preset per task, e.g. ``mammut.tasks.vqa.VQAModule``.

Settings flow one way (docs/architecture.md): the data module's tokenizer sizes the model (a CLI
link); in ``setup`` the data side is told the image size, context length and frames, and each
task receives the tokenizer and its typed inputs. No step reads the data module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from mammut.checkpoint_hooks import CheckpointHooks
from mammut.data_counts import DataCounts
from mammut.learning_progress import LearningProgressSettings
from mammut.loss_guard import LossGuard
from mammut.model import GenerationConfig, Mammut, MammutConfig
from mammut.model.lora import LoraConfig
from mammut.optimization import Optimization, warmup_cosine
from mammut.report import log_samples, report_table
from mammut.sharding import ShardingHooks
from mammut.source_feedback import SourceFeedback
from mammut.stopping import CheckpointsBehindTheGuard, SaveOnSignal
from mammut.task import Task, TaskContext, check_task_names, eval_loader_tasks, task_inputs
from mammut.task_weighting import TaskWeighting
from mammut.trained import TrainedParameters, hold_frozen_norms, parameter_counts

__all__ = ["MammutModule", "warmup_cosine"]


class MammutModule(CheckpointHooks, ShardingHooks, L.LightningModule):
    def __init__(
        self,
        tasks: dict[str, Task] | None = None,
        task_weights: dict[str, float] | None = None,
        task_weighting: str = "fixed",
        loss_balance_alpha: float = 0.5,
        adaptive_weighting: LearningProgressSettings | None = None,
        architecture: MammutConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        freeze: list[str] | None = None,
        lr_scales: dict[str, float] | None = None,
        init_from: str | None = None,
        init_strict: bool = False,
        restart_unmet_tokens: bool = True,
        grad_checkpointing: bool = False,
        compile: bool = False,
        generation: GenerationConfig | None = None,
        divergence_factor: float | None = 1000.0,
        lora: LoraConfig | None = None,
        adapter_checkpoints: bool = False,
    ):
        """
        Args:
            tasks: name -> task (``PretrainTask``, ``VQATask``, ``DetectionTask`` or your own
                ``mammut.task.Task``). The names key the metrics and the batches of a joint run;
                a per-task preset (``PretrainModule``, ``VQAModule``) sets this itself.
            task_weights: name -> weight of that task's loss in the sum (default 1 each).
            task_weighting: ``"fixed"`` keeps ``task_weights``; ``"loss_balanced"`` scales each by
                (its loss now / its first loss) ** ``loss_balance_alpha`` (``mammut.task_weighting``).
                ``"adaptive"`` gives the weight to the tasks whose loss is still falling
                (learning progress, ``mammut.learning_progress``; docs/adaptive-mixing.md).
            loss_balance_alpha: the exponent of the loss ratio in ``"loss_balanced"`` weighting.
            adaptive_weighting: the settings of ``"adaptive"`` weighting (``LearningProgressSettings``).
            architecture: the model's shape (``mammut.model.MammutConfig``, configs/model/).
            lr: peak learning rate, reached after ``warmup_steps``, then cosine decay.
            weight_decay: AdamW decay, not applied to the parameters that the model and the tasks
                declare in ``no_weight_decay()`` (norms, biases, embeddings, the temperature).
            betas: AdamW betas.
            warmup_steps: linear warmup from 0 to ``lr``.
            min_lr_ratio: the learning rate at the end of training, as a fraction of ``lr``.
            freeze: glob patterns of parameter names to freeze, e.g. ``["model.vision.*"]``.
            lr_scales: glob pattern of parameter names -> multiplier of ``lr`` for them, e.g.
                ``{"tasks.vqa.prefix.prompt": 10.0}``; the first matching pattern applies.
            init_from: weights to start from: a Lightning checkpoint, a torch state dict, a
                .safetensors file or an openMaMMUT checkpoint, read without running code and
                matched by name and shape (``mammut.model.weights``). Restoring a checkpoint of
                this run (``--ckpt_path``) never reads it again: the checkpoint holds every weight.
            init_strict: fail if any parameter is not found with its shape in ``init_from``;
                otherwise the missing ones keep their initialisation and are listed.
            restart_unmet_tokens: the vocabulary rows that ``init_from``'s training never met (its
                checkpoint counts them) start at the mean of the rows it met, instead of where its
                softmax pushed them (``mammut.model.token_use``); False keeps every row as loaded.
            grad_checkpointing: recompute each transformer block's activations in the backward
                pass (less memory, about a third more compute); under DDP and FSDP2. With
                configs/strategy/fsdp.yaml, which checkpoints through the strategy, leave it off.
            compile: ``torch.compile`` each transformer block (before sharding); the first steps
                are slow while it compiles.
            generation: decoding settings used in evaluation and prediction.
            divergence_factor: stop training, before the weights are updated, when a finite loss
                exceeds this multiple of the larger of the first loss and the running mean of the
                losses (``mammut.loss_guard``). None: no such check.
            lora: LoRA adapters on the shared model's linear layers (``mammut.model.lora``, e.g.
                configs/finetune_vqa_lora.yaml); the model's own weights are then frozen.
            adapter_checkpoints: checkpoints hold only the trained parameters, with the path and
                SHA-256 of ``init_from``, the base they adapt (``mammut.adapters``);
                ``python -m mammut.merge_lora`` turns one into a full checkpoint.
        """
        super().__init__()
        # A preset builds its tasks from its own arguments; tasks given as objects (not as the
        # CLI's class_path dicts) cannot be saved as plain data and are left out.
        given_as_config = all(isinstance(task, dict) for task in (tasks or {}).values())
        self.save_hyperparameters(ignore=[] if given_as_config else ["tasks"])
        # Checkpoints hold settings as plain data, which loads without unpickling any class.
        for name, value in self.hparams.items():
            if dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        self.architecture = _as(MammutConfig, architecture) or MammutConfig()
        self.generation = _as(GenerationConfig, generation) or GenerationConfig()
        self.model = Mammut(self.architecture)
        if not tasks:
            raise ValueError("a MammutModule needs at least one task (model.tasks, or a preset such as VQAModule)")
        self.tasks = nn.ModuleDict(tasks)
        unknown = set(task_weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"task_weights name {sorted(unknown)}, which are not among the tasks {list(self.tasks)}")
        self.task_weighting = TaskWeighting({name: (task_weights or {}).get(name, 1.0) for name in self.tasks},
                                            task_weighting, loss_balance_alpha,
                                            _as(LearningProgressSettings, adaptive_weighting))
        for task in self.tasks.values():
            task.build(self.architecture)  # its own modules exist before init_from and freeze
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.compile_blocks = compile
        self.optimization = Optimization(lr, weight_decay, betas, warmup_steps, min_lr_ratio, lr_scales)
        self.trained = TrainedParameters(freeze, _as(LoraConfig, lora), adapter_checkpoints, init_from)
        self.restart_unmet_tokens = restart_unmet_tokens
        if init_from:
            self.trained.kept_initialisation = set(self.load_weights(init_from, strict=init_strict).unfilled)
        self.trained.apply(self, self.model)
        self.counts = DataCounts()
        self.loss_guard = LossGuard(divergence_factor)
        self.eval_task_names = list(self.tasks)  # the tasks evaluated, in the order of their loaders
        self.eval_loader_tasks: dict[str, list[str]] = {}  # per stage, the task of each evaluation loader

    # ------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        """Connect the data side and the tasks to the model's settings, once, before any step."""
        if stage == "fit":
            self.trained.check_can_save(self.trainer.strategy)
        data = getattr(self.trainer, "datamodule", None)
        a = self.architecture
        if data is not None and hasattr(data, "connect"):
            data.connect(image_size=a.image_size, context_length=a.context_length, frames=a.video_frames)
        self.eval_task_names = check_task_names(data, list(self.tasks))
        self.eval_loader_tasks = {stage: eval_loader_tasks(data, self.eval_task_names, stage)
                                  for stage in ("val", "test")}
        self.counts.records_dropped = dict(getattr(data, "records_skipped", {}))
        for name, task in self.tasks.items():
            task.connect(TaskContext(architecture=a, generation=self.generation, inputs=task_inputs(data, name, task, a),
                                     tokenizer=getattr(data, "tokenizer", None),
                                     output_dir=Path(self.trainer.log_dir) if self.trainer.log_dir else None))

    def on_fit_start(self) -> None:
        # Printed at the start of every fit: how much of the model this run trains (PEFT: under 1%).
        trainable, total = parameter_counts(self)
        if self.trainer.is_global_zero:
            print(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)", flush=True)

    def configure_callbacks(self) -> list:
        # The losses that adaptive source mixing follows, taken in first, so that every checkpoint
        # of a step holds them; then how a run stops (``mammut.stopping``).
        return [SourceFeedback(), CheckpointsBehindTheGuard(), SaveOnSignal()]

    def train(self, mode: bool = True) -> MammutModule:
        super().train(mode)
        hold_frozen_norms(self)
        return self

    # --------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int):
        """One step of one task (a joint run's loader yields ``{task name: batch}``), or of several."""
        batches = batch if isinstance(batch, dict) else {self._only_task(): batch}
        for task_batch in batches.values():
            self.count_data(task_batch)
        self.model.token_use.add([b.tokens for b in batches.values() if getattr(b, "tokens", None) is not None],
                                 lambda counts: self._all_ranks(counts, "sum"))
        if self.trainer.world_size == 1 and all(len(b) == 0 for b in batches.values()):
            return None  # every sample of this step was bad: skip it
        total, parts, task_losses = 0.0, {}, {}
        weights = self.task_weighting.weights()
        for name, task_batch in batches.items():
            # A rank whose samples were all bad still runs the model, on zero rows, so that the
            # other ranks' collectives do not wait for it; it adds zero to the loss.
            task_loss = self.tasks[name].loss(self.model, task_batch if len(task_batch) else
                                              self.tasks[name].empty_batch(self.device))
            total = total + weights[name] * task_loss.total
            task_losses[name] = task_loss.total.detach()
            parts.update({f"{name}/loss": task_loss.total.detach(),
                          **{f"{name}/{part}": value for part, value in task_loss.parts.items()}})
        self.check_finite(total, parts)
        self.task_weighting.update_all_ranks(task_losses, self._all_ranks)
        if self.task_weighting.mode != "fixed":
            parts.update({f"{name}/weight": torch.tensor(weights[name]) for name in batches})
        self.log("train/loss", total, prog_bar=True)
        self._log_task_metrics({f"train/{name}": value for name, value in parts.items()})
        return {"loss": total, "parts": parts}  # the parts for ``SourceFeedback``, which weighs data sources

    @torch.no_grad()
    def probe_loss(self, batch) -> dict[str, Tensor]:
        """The one task's loss and its parts on ``batch``, the weights as they are, changing nothing:
        no gradients, nothing logged, the model in eval mode (no training-only draws, so that two
        probes of one batch differ only by the weights). Every rank calls it alike (a contrastive
        loss gathers over ranks)."""
        was_training = self.training
        self.train(False)
        try:
            with self.trainer.precision_plugin.forward_context():
                task_loss = self.tasks[self._only_task()].loss(self.model, batch)
        finally:
            self.train(was_training)
        return {"loss": task_loss.total.detach(), **{k: v.detach() for k, v in task_loss.parts.items()}}

    def _log_task_metrics(self, metrics: dict[str, Tensor]) -> None:
        """Straight to the loggers, at the logging interval: Lightning would repeat a metric's last
        value at every later step, and a task's loss exists only at the steps that drew it."""
        if self.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            values = {name: float(value.detach()) for name, value in metrics.items()}
            for logger in self.loggers:
                logger.log_metrics(values, step=self.global_step)

    def _only_task(self) -> str:
        if len(self.tasks) != 1:
            raise ValueError(f"with several tasks ({list(self.tasks)}) each batch must come as {{task name: batch}}")
        return next(iter(self.tasks))

    def check_finite(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        """Stop before a non-finite or diverging loss reaches the weights, on the largest loss of all
        ranks, so that they stop together (``LossGuard``)."""
        io = self.trainer.strategy.checkpoint_io
        self.loss_guard.check_step(loss, parts, self._all_ranks, self.global_step, self.current_epoch,
                                   getattr(io, "newest_written", None), getattr(io, "holding", False))

    def _all_ranks(self, value: Tensor, reduce_op: str) -> Tensor:
        return self.trainer.strategy.reduce(value, reduce_op=reduce_op) if self.trainer.world_size > 1 else value

    def count_data(self, batch) -> None:
        """Count a batch's skipped samples and cut texts (``DataCounts``); in training, log the totals
        (in evaluation they are logged once, at the end: several loaders may run)."""
        if self.trainer.sanity_checking:
            return
        split = "train" if self.trainer.training else "val" if self.trainer.validating else "test"
        self.counts.add(batch.num_skipped, batch.truncated, split)
        if self.trainer.training:
            self.log_dict(self.data_counts(), reduce_fx="max")

    def data_counts(self) -> dict[str, float]:
        """``DataCounts``'s totals over every rank (a collective: every rank calls it)."""
        return self.counts.metrics(lambda counts: self._all_ranks(counts.to(self.device), "sum").cpu())

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, dataloader_idx, "test")

    def _evaluate(self, batch, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        self.count_data(batch)
        if len(batch):
            task = self.eval_loader_tasks.get(stage, self.eval_task_names)[dataloader_idx]
            self.tasks[task].evaluate(self.model, batch, stage, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        if not self.trainer.sanity_checking:
            self.log_dict(self.data_counts(), reduce_fx="max")
        for name in self.eval_task_names:
            task = self.tasks[name]
            if self.trainer.sanity_checking:
                task.reset(stage)
                continue
            report = task.report(stage)
            if report is None:
                continue
            # Every rank holds the same values (tasks gather the whole set); sync_dist only
            # confirms it, and lets checkpoint monitors read them on every rank.
            self.log_dict({f"{stage}/{name}/{metric}": float(v) for metric, v in report.scores.items()}, sync_dist=True)
            self.log_dict({f"{stage}_baseline/{name}/{metric}": float(v) for metric, v in report.baselines.items()},
                          sync_dist=True)
            if self.trainer.is_global_zero:
                print(f"\n{stage} {name} (epoch {self.current_epoch}, step {self.global_step}):\n"
                      + report_table(report), flush=True)
            log_samples(self.logger, f"{stage}/{name}/samples", report.samples, self.global_step)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        task = self.tasks[self.eval_task_names[dataloader_idx]]
        predictions = task.predict(self.model, batch)
        if self.trainer.is_global_zero:
            for prediction in predictions:
                print(task.format_prediction(prediction), flush=True)
        return predictions

    def on_predict_epoch_end(self) -> None:
        for task in self.tasks.values():
            task.end_prediction()

    # ------------------------------------------------------- optimiser, weights
    def no_weight_decay(self) -> set[str]:
        """Every parameter that the model or a task declares free of weight decay."""
        names = {f"model.{name}" for name in self.model.no_weight_decay()}
        for task_name, task in self.tasks.items():
            names |= {f"tasks.{task_name}.{name}" for name in task.no_weight_decay()}
        return names

    def configure_optimizers(self):
        # The schedule's length is asked for once training runs, not now (``Optimization.configure``).
        return self.optimization.configure(self.named_parameters(), self.no_weight_decay(),
                                           lambda: self.trainer.estimated_stepping_batches)

    def on_train_start(self) -> None:
        self.optimization.follow(config.scheduler for config in self.trainer.lr_scheduler_configs)


def _as(kind, value):
    """Settings given as the dataclass, or as the plain dict a checkpoint or the CLI stores."""
    return kind(**value) if isinstance(value, dict) else value
