"""MammutModule: the one LightningModule, holding the shared MaMMUT and a dict of tasks.

Everything every task needs is written here once: building the model, AdamW with warmup and
cosine decay, freezing by name pattern, loading (partial) weights, compilation and FSDP2
sharding, the training step (several tasks' losses summed with their weights), the guard for
a rank whose samples were all bad, the non-finite and divergence checks, counting skipped
and cut samples, evaluation, the report table with baselines and the metric names
``{stage}/{task}/{metric}``. A task (``mammut.task.Task``) brings its head, loss, metrics and
samples; ``tasks/<name>.py`` offers a thin preset per task, e.g. ``mammut.tasks.vqa.VQAModule``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
import torch
from torch import Tensor, nn

from mammut import sharding
from mammut.adapters import BaseWeights, adapter_state
from mammut.loss_guard import LossGuard
from mammut.model import GenerationConfig, Mammut, MammutConfig
from mammut.model.lora import LoraConfig, add_lora, base_key
from mammut.model.openmammut import convert as convert_openmammut
from mammut.model.openmammut import is_openmammut
from mammut.model.weights_file import read_state_dict
from mammut.optimization import follow_run_settings, parameter_groups, warmup_cosine
from mammut.task import Task, TaskContext
from mammut.task_weighting import TaskWeighting
from mammut.visualize import captioned_images

log = logging.getLogger(__name__)

# Parameters of the video path, which image-text weights do not hold: the tubes start from the
# patch embedding (``VisionEncoder.initialise_tubes``), the video blocks from their own init.
VIDEO_PATH = ("model.vision.tubes.", "model.vision.video_blocks.")

# Sharding strategies, whose checkpoints and their loading adapter checkpoints do not handle.
SHARDED_CHECKPOINTS = (ModelParallelStrategy, FSDPStrategy, DeepSpeedStrategy)

__all__ = ["MammutModule", "warmup_cosine"]


class MammutModule(L.LightningModule):
    def __init__(
        self,
        tasks: dict[str, Task] | None = None,
        task_weights: dict[str, float] | None = None,
        task_weighting: str = "fixed",
        loss_balance_alpha: float = 0.5,
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
        grad_checkpointing: bool = False,
        compile: bool = False,
        generation: GenerationConfig | None = None,
        divergence_factor: float | None = 1000.0,
        lora: LoraConfig | None = None,
        adapter_checkpoints: bool = False,
    ):
        """
        Args:
            tasks: name -> task (``mammut.tasks.pretrain.PretrainTask``, ``mammut.tasks.vqa.VQATask``,
                or your own ``mammut.task.Task``). The names key the metrics and the batches of a
                joint run; a per-task preset (``PretrainModule``, ``VQAModule``) sets this itself.
            task_weights: name -> weight of that task's loss in the sum (default 1 each).
            task_weighting: ``"fixed"``: the weights stay ``task_weights``; ``"loss_balanced"``:
                each is scaled by (its task's loss now / its first loss) ** ``loss_balance_alpha``,
                so the tasks that have learned least weigh most (``mammut.task_weighting``).
            loss_balance_alpha: the exponent of the loss ratio in ``"loss_balanced"`` weighting.
            architecture: the model's shape (see ``mammut.model.MammutConfig`` and configs/model/).
            lr: peak learning rate, reached after ``warmup_steps``, then cosine decay.
            weight_decay: AdamW decay, not applied to the parameters that the model and the tasks
                declare in ``no_weight_decay()`` (norms, biases, embeddings, the temperature).
            betas: AdamW betas.
            warmup_steps: linear warmup from 0 to ``lr``.
            min_lr_ratio: the learning rate at the end of training, as a fraction of ``lr``.
            freeze: glob patterns of parameter names to freeze, e.g. ``["model.vision.*"]``.
            lr_scales: glob pattern of parameter names -> multiplier of ``lr`` for them, e.g.
                ``{"tasks.vqa.prefix.prompt": 10.0}``; the first matching pattern applies.
            init_from: weights to start from: a Lightning checkpoint, a torch state dict or a
                .safetensors file. Parameters are matched by name and shape. The file is read
                without running code (``weights_only``). Restoring a checkpoint of this run
                (``--ckpt_path``, ``load_from_checkpoint``) never reads it again: the checkpoint
                holds every weight.
            init_strict: fail if any parameter of the model is not found with its shape in
                ``init_from``; otherwise the missing ones keep their initialisation and are listed.
            grad_checkpointing: recompute each transformer block's activations in the backward
                pass, which saves memory for about a third more compute. Works under DDP and
                FSDP2; with ``configs/strategy/fsdp.yaml``, which checkpoints through the
                strategy instead, leave it off.
            compile: ``torch.compile`` each transformer block (in ``configure_model``, before
                sharding); the first steps are slow while it compiles.
            generation: decoding settings used in evaluation and prediction.
            divergence_factor: stop training, before the weights are updated, when a finite
                loss exceeds this multiple of the larger of the first loss and the running mean
                of the losses (an explosion the non-finite check would catch only steps later,
                after checkpoints had saved it). None: no such check.
            lora: LoRA adapters on the shared model's linear layers (``mammut.model.lora``, e.g.
                configs/finetune_vqa_lora.yaml). The model's own weights are then frozen: the
                adapters and the task heads train. Added after ``init_from`` and ``freeze``.
            adapter_checkpoints: checkpoints hold only the trained parameters, with the path and
                SHA-256 of ``init_from``, the base they adapt (``mammut.adapters``). Restoring one
                loads that base first and refuses another; ``python -m mammut.merge_lora`` turns
                one into a full checkpoint.
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
        # Checkpoints written by the CLI store these settings as plain dicts.
        self.architecture = MammutConfig(**architecture) if isinstance(architecture, dict) else architecture or MammutConfig()
        self.generation = GenerationConfig(**generation) if isinstance(generation, dict) else generation or GenerationConfig()
        self.lora = LoraConfig(**lora) if isinstance(lora, dict) else lora
        self.model = Mammut(self.architecture)
        if not tasks:
            raise ValueError("a MammutModule needs at least one task (model.tasks, or a preset such as VQAModule)")
        self.tasks = nn.ModuleDict(tasks)
        unknown = set(task_weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"task_weights name {sorted(unknown)}, which are not among the tasks {list(self.tasks)}")
        self.task_weighting = TaskWeighting({name: (task_weights or {}).get(name, 1.0) for name in self.tasks},
                                            task_weighting, loss_balance_alpha)
        for task in self.tasks.values():
            task.build(self.architecture)  # its own modules exist before init_from and freeze
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.kept_initialisation: set[str] = set()  # parameters that init_from did not fill
        if init_from:
            self.load_weights(init_from, strict=init_strict)
        if freeze:
            self.freeze_matching(freeze)
        if self.lora:
            targets = add_lora(self.model, self.lora)
            self.train(self.training)  # frozen batch norms of the base stop updating
            log.info("LoRA rank %d on %d linear layers, e.g. %s", self.lora.rank, len(targets), targets[:3])
        # The base an adapter checkpoint refers to; set from the checkpoint when restored without init_from.
        self.base_weights = BaseWeights.of(init_from) if adapter_checkpoints and init_from else None
        self.skipped_samples = 0
        self.records_skipped: dict[str, int] = {}  # per split, records the readers dropped
        self.truncated_texts = 0
        self.loss_guard = LossGuard(divergence_factor)
        self.eval_task_names = list(self.tasks)  # the task of each evaluation dataloader, in order
        self._configured = False

    # ------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        """Connect the data side and the tasks to the model's settings, once, before any step.

        Settings flow one way: the data module is told the image size and context length and
        never reads the model; each task is given the tokenizer and the data's reference
        information, and never reads the trainer's data module itself.
        """
        if stage == "fit" and self.hparams.get("adapter_checkpoints"):
            self._check_adapter_checkpoints()
        data = getattr(self.trainer, "datamodule", None)
        if data is not None and hasattr(data, "connect"):
            a = self.architecture
            data.connect(image_size=a.image_size, context_length=a.context_length, frames=a.video_frames)
        self.eval_task_names = list(getattr(data, "task_names", None) or self.tasks)
        for name, task in self.tasks.items():
            task.connect(TaskContext(
                architecture=self.architecture, generation=self.generation,
                tokenizer=getattr(data, "tokenizer", None),
                references=data.references_for(name) if hasattr(data, "references_for") else {},
                output_dir=Path(self.trainer.log_dir) if self.trainer.log_dir else None))

    def _check_adapter_checkpoints(self) -> None:
        """Fail before the first step, not at the first save, where adapter checkpoints cannot be written."""
        if isinstance(self.trainer.strategy, SHARDED_CHECKPOINTS):
            raise ValueError(f"adapter_checkpoints works with one device or DDP, not with the sharding strategy "
                             f"{type(self.trainer.strategy).__name__}: set --model.adapter_checkpoints=false")
        if self.base_weights is None:
            raise ValueError("adapter_checkpoints: an adapter refers to its base weights, and this run has none; "
                             "set model.init_from (or adapter_checkpoints: false)")

    # ------------------------------------------------- compilation, sharding
    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks: the units of compilation, sharding and activation checkpointing."""
        return [*self.model.vision.vit.blocks, *self.model.vision.video_blocks.values(), *self.model.decoder.layers]

    def configure_model(self) -> None:
        """Called by Lightning on every process before the optimiser is built (once per module).

        Under ``ModelParallelStrategy`` (configs/strategy/fsdp2.yaml) the blocks, then the
        model and each task's modules, are sharded over the data-parallel ranks with FSDP2.
        """
        if self._configured:
            return
        self._configured = True
        if self.hparams.compile:
            for block in self.transformer_blocks():
                block.compile()
        if self.device_mesh is not None:
            roots = [self.model, *(child for task in self.tasks.values() for child in task.children())]
            entry_points = {self.model: list(Mammut.fsdp_entry_points)}
            for task in self.tasks.values():
                entry_points.update(task.fsdp_entry_points())
            sharding.shard(roots, self.transformer_blocks(), self.device_mesh["data_parallel"], entry_points)

    # Evaluation and prediction call model methods that FSDP2's hooks do not see (see
    # ``sharding.hold_full_weights``): under FSDP2 each rank holds the full weights for the
    # duration of an evaluation batch.
    def _hold_full_weights(self, hold: bool) -> None:
        if self.device_mesh is not None:
            sharding.hold_full_weights(self, hold)

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(True)

    def on_validation_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(False)

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(True)

    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(False)

    def on_predict_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(True)

    def on_predict_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._hold_full_weights(False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Under Lightning's FSDPStrategy (FSDP1) the Trainer cannot clip by norm: the norm spans
        # every rank's shard, and only FSDP's root module can compute it.
        model = self.trainer.model
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and isinstance(model, torch.distributed.fsdp.FullyShardedDataParallel)):
            model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---------------------------------------------------------------- weights
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, without running code and without reading the
        checkpoint's ``init_from`` again: the checkpoint already holds every weight, or, for an
        adapter checkpoint, names its base, which ``on_load_checkpoint`` loads. ``base=path``: an
        adapter checkpoint's base weights, where they are now if they moved (checked by hash)."""
        kwargs.setdefault("weights_only", True)
        base = kwargs.pop("base", None)
        kwargs["init_from"] = str(base) if base else None
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def load_weights(self, path: str, strict: bool = False) -> None:
        """Copy matching parameters from a checkpoint; report what did not match. An openMaMMUT
        checkpoint (open_clip key names) is converted first, and must then fill the whole model."""
        state = read_state_dict(path, purpose="init_from")
        imported = is_openmammut(state)
        state = self.openmammut_weights(state, path) if imported else self.current_key_names(state)
        if any(".lora_" in key for key in state):
            raise ValueError(f"{path} holds LoRA adapters: merge them into its weights first "
                             f"(python -m mammut.merge_lora {path} --out merged.ckpt) and start from that")
        # Under LoRA a base weight lives in its wrapper (``qkv.base_layer.weight``); the file has it as ``qkv.weight``.
        own = {base_key(name): value for name, value in self.state_dict().items()}
        position = "model.vision.vit.pos_embed"
        if position in state and position in own and state[position].shape != own[position].shape:
            # Weights of another image size (e.g. a detector's higher resolution than pretraining's).
            state[position] = self.model.vision.resample_position_embedding(state[position])
        # A single number may be stored with shape () (older checkpoints) or (1,).
        loadable = {k: v.reshape(own[k].shape) for k, v in state.items()
                    if k in own and (own[k].shape == v.shape or own[k].numel() == v.numel() == 1)}
        missing = sorted(k for k in set(own) - set(loadable) if ".lora_" not in k)  # adapters start anew
        self.kept_initialisation = set(missing)  # what an adapter checkpoint must hold beside the adapters
        mismatched = sorted(k for k in state if k in own and k not in loadable)
        # An import must fill the whole image-text model; the video path and task heads keep their own.
        required = [k for k in missing if k.startswith("model.") and not k.startswith(VIDEO_PATH)] if imported \
            else missing if strict else []
        if required:
            raise ValueError(f"{path}: {len(required)} parameters missing or of another shape, e.g. {required[:5]}"
                             + (f"; shapes differ for {mismatched[:5]}" if mismatched else ""))
        if not loadable:
            raise ValueError(f"{path}: no parameter matches this model by name and shape")
        wrapped = {base_key(name): name for name in self.state_dict()}
        self.load_state_dict({wrapped[k]: v for k, v in loadable.items()}, strict=False)
        if self.model.vision.tubes is not None and not any(k.startswith("model.vision.tubes.") for k in loadable):
            self.model.vision.initialise_tubes()  # image weights: the video tubes start from their patch embedding
        log.info("loaded %d tensors from %s; %d kept their initialisation%s", len(loadable), path, len(missing),
                 f"; shapes differ for {mismatched}" if mismatched else "")

    def openmammut_weights(self, state: dict[str, Tensor], path: str) -> dict[str, Tensor]:
        """An openMaMMUT state dict under this module's names (``mammut.model.openmammut``).
        What the conversion could not place is an error."""
        conversion = convert_openmammut(state, self.architecture)
        if conversion.unused:
            raise ValueError(f"{path}: {len(conversion.unused)} openMaMMUT tensors have no place in this architecture, "
                             f"e.g. {conversion.unused[:5]}; is model.architecture openMaMMUT's "
                             "(configs/model/openmammut_l14.yaml)?")
        log.info("%s: openMaMMUT checkpoint, %d tensors converted to mammut's names", path, len(conversion.state))
        return {f"model.{name}": tensor for name, tensor in conversion.state.items()}

    def current_key_names(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict with the key names of checkpoints written before tasks were components
        (a task's parameters at the top level, e.g. ``prefix.*``) mapped to ``tasks.<name>.*``."""
        renames = {old: f"tasks.{name}.{new}" for name, task in self.tasks.items()
                   for old, new in task.legacy_keys().items()}
        renamed = {}
        for key, value in state.items():
            old = next((prefix for prefix in renames if key.startswith(prefix)), None)
            renamed[renames[old] + key[len(old):] if old else key] = value
        return renamed

    def freeze_matching(self, patterns: list[str]) -> None:
        frozen = 0
        for name, parameter in self.named_parameters():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                parameter.requires_grad_(False)
                frozen += 1
        if frozen == 0:
            raise ValueError(f"freeze patterns {patterns} match no parameter")
        self.train(self.training)  # frozen batch norms stop updating their statistics now

    def train(self, mode: bool = True) -> MammutModule:
        """Train mode, except for the batch norms whose weights are frozen: their running statistics
        stay as loaded too, so a frozen backbone (e.g. a conv stem under PEFT) does not drift."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and not any(
                        p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def lr_scale(self, name: str) -> float:
        for pattern, scale in (self.hparams.lr_scales or {}).items():
            if fnmatch.fnmatch(name, pattern):
                return scale
        return 1.0

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total), counting tied weights once."""
        unique = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)

    def no_weight_decay(self) -> set[str]:
        """Every parameter that the model or a task declares free of weight decay."""
        names = {f"model.{name}" for name in self.model.no_weight_decay()}
        for task_name, task in self.tasks.items():
            names |= {f"tasks.{task_name}.{name}" for name in task.no_weight_decay()}
        return names

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        h = self.hparams
        groups = parameter_groups(self.named_parameters(), self.no_weight_decay(), self.lr_scale, h.lr, h.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=h.lr, betas=h.betas)
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, h.warmup_steps, total, h.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        h = self.hparams
        follow_run_settings((config.scheduler for config in self.trainer.lr_scheduler_configs),
                            h.lr, h.weight_decay, h.betas)

    def on_fit_start(self) -> None:
        # Printed at the start of every fit: how much of the model this run trains (PEFT: under 1%).
        trainable, total = self.parameter_counts()
        if self.trainer.is_global_zero:
            print(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)", flush=True)

    # --------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int):
        """One step of one task (a joint run's loader yields ``{task name: batch}``), or of several."""
        batches = batch if isinstance(batch, dict) else {self._only_task(): batch}
        if self.trainer.world_size == 1 and all(len(b) == 0 for b in batches.values()):
            for task_batch in batches.values():
                self.count_data(task_batch)
            return None  # every sample of this step was bad: skip it
        total, parts, task_losses = 0.0, {}, {}
        weights = self.task_weighting.weights()
        for name, task_batch in batches.items():
            self.count_data(task_batch)
            # A rank whose samples were all bad still runs the model, on zero rows, so that the
            # other ranks' collectives do not wait for it; it adds zero to the loss.
            task_loss = self.tasks[name].loss(self.model, task_batch if len(task_batch) else
                                              self.tasks[name].empty_batch(self.device))
            total = total + weights[name] * task_loss.total
            task_losses[name] = task_loss.total.detach()
            parts.update({f"{name}/loss": task_loss.total.detach(),
                          **{f"{name}/{part}": value for part, value in task_loss.parts.items()}})
        self.check_finite(total, parts)
        self.update_task_weighting(task_losses)
        if self.task_weighting.mode != "fixed":
            parts.update({f"{name}/weight": torch.tensor(weights[name]) for name in batches})
        self.log("train/loss", total, prog_bar=True)
        self._log_task_metrics({f"train/{name}": value for name, value in parts.items()})
        return total

    def update_task_weighting(self, task_losses: dict[str, Tensor]) -> None:
        """Feed this step's task losses, averaged over the ranks, to the loss-balanced weighting,
        so that every rank weighs the next step's tasks alike."""
        if self.task_weighting.mode == "fixed":
            return
        losses = torch.stack([loss.float() for loss in task_losses.values()])
        if self.trainer.world_size > 1:
            losses = self.trainer.strategy.reduce(losses, reduce_op="mean")
        self.task_weighting.update(dict(zip(task_losses, losses.tolist())))

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
        """Stop before a non-finite or diverging loss reaches the weights (``LossGuard``), on the
        largest loss of all ranks, so that they stop together."""
        local = loss.detach().float()
        worst = local if torch.isfinite(local) else torch.full_like(local, math.inf)
        if self.trainer.world_size > 1:
            worst = self.trainer.strategy.reduce(worst, reduce_op="max")
        detail = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items())
        self.loss_guard.check(float(worst), detail, f"at global step {self.global_step} (epoch {self.current_epoch})",
                              self.global_step)

    # ------------------------------------------------- skipped and cut samples
    def count_data(self, batch) -> None:
        self.count_skipped(batch.num_skipped)
        self.count_truncated(batch.truncated)
        # In evaluation the counts are logged once, at the end (several loaders may run).
        if self.trainer.training:
            self.log_data_counts()

    def log_data_counts(self) -> None:
        self.log("data/skipped_samples", float(self.skipped_samples + sum(self.records_skipped.values())),
                 reduce_fx="max")
        self.log("data/truncated_texts", float(self.truncated_texts), reduce_fx="max")

    def count_skipped(self, num_skipped: int) -> None:
        """Bad samples dropped by the data pipeline are counted and logged, never hidden.

        ``data/skipped_samples`` counts every skip of the run: the samples that training and
        evaluation steps dropped, each time one meets them (``skipped_samples``, kept in
        checkpoints), plus the records the readers dropped from each split whose loop has run
        (``records_skipped``, once per run: a resumed run reads the files again). The sanity
        check's batches are not counted: the first validation meets them again.
        """
        if self.trainer.sanity_checking:
            return
        self._count_records_skipped()
        self.skipped_samples += num_skipped
        if num_skipped:
            log.warning("skipped %d bad samples so far", self.skipped_samples + sum(self.records_skipped.values()))

    def count_truncated(self, truncated: list[str]) -> None:
        """Texts cut to fit the context length are counted and logged; the first one is named."""
        if self.trainer.sanity_checking:
            return
        if truncated and not self.truncated_texts:
            log.warning("%s; texts cut to fit are counted in data/truncated_texts", truncated[0])
        self.truncated_texts += len(truncated)

    def _count_records_skipped(self) -> None:
        """Take in what the readers dropped from the split that this loop runs on. Assigned, not
        added: a split counts once however many epochs it runs, and once in a resumed run."""
        split = "train" if self.trainer.training else "val" if self.trainer.validating else "test"
        datamodule = getattr(self.trainer, "datamodule", None)
        self.records_skipped[split] = getattr(datamodule, "records_skipped", {}).get(split, 0)

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, dataloader_idx, "test")

    def _evaluate(self, batch, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        self.count_data(batch)
        if len(batch):
            self.tasks[self.eval_task_names[dataloader_idx]].evaluate(self.model, batch, stage, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        if not self.trainer.sanity_checking:
            self.log_data_counts()
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
            self._log_samples(f"{stage}/{name}/samples", report.samples)

    def _log_samples(self, tag: str, samples: tuple[Tensor, list[str]] | None) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger else None
        if samples is None or not hasattr(experiment, "add_images"):
            return
        images, texts = samples
        experiment.add_images(tag, captioned_images(images, texts), self.global_step)
        experiment.add_text(tag, "\n\n".join(texts), self.global_step)

    # ------------------------------------------------------------- prediction
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        task = self.tasks[self.eval_task_names[dataloader_idx]]
        predictions = task.predict(self.model, batch)
        if self.trainer.is_global_zero:
            for prediction in predictions:
                print(task.format_prediction(prediction), flush=True)
        return predictions

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.hparams.get("adapter_checkpoints"):
            # The trained parameters, the task heads' buffers, and what the base did not fill (e.g. a
            # video path that image weights lack, frozen at its initialisation).
            trained = {name for name, p in self.named_parameters() if p.requires_grad}
            trained |= {f"tasks.{name}" for name, _ in self.tasks.named_buffers()}
            checkpoint["state_dict"] = adapter_state(checkpoint["state_dict"], trained,
                                                     lambda name: base_key(name) in self.kept_initialisation)
            checkpoint["base_weights"] = self.base_weights.as_dict()
        checkpoint["skipped_samples"] = self.skipped_samples
        checkpoint["truncated_texts"] = self.truncated_texts
        checkpoint["loss_history"] = dict(self.loss_guard.history)
        checkpoint["task_weighting"] = self.task_weighting.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        self.truncated_texts = checkpoint.get("truncated_texts", 0)
        self.loss_guard.history.update(checkpoint.get("loss_history", {}))
        self.task_weighting.load_state_dict(checkpoint.get("task_weighting", {}))
        state = checkpoint.get("state_dict", {})
        renamed = self.current_key_names(state)
        state.clear()
        state.update(renamed)
        # Older checkpoints hold the temperature with shape () rather than (1,).
        own = dict(self.named_parameters())
        for name, value in state.items():
            if name in own and own[name].shape != value.shape and own[name].numel() == value.numel() == 1:
                state[name] = value.reshape(own[name].shape)
        base = BaseWeights.from_checkpoint(checkpoint)
        if base is not None:
            self.attach_base(base)
            for name, value in self.state_dict().items():  # the base's weights, under the adapter
                state.setdefault(name, value)

    def attach_base(self, base: BaseWeights) -> None:
        """Make sure the base an adapter checkpoint was trained on is loaded: the model's own
        ``init_from`` if it has one (checked by hash), or else the file the checkpoint names."""
        if self.base_weights is not None:
            base.check_same(self.base_weights)
            return
        if not Path(base.path).is_file():
            raise FileNotFoundError(f"this adapter checkpoint adapts the base weights {base.path} "
                                    f"(sha256 {base.sha256[:16]}...), which are not there: pass "
                                    "--model.init_from=<that file, wherever it is now>")
        found = BaseWeights.of(base.path)
        base.check_same(found)
        self.load_weights(base.path)
        self.base_weights = found


def report_table(report) -> str:
    """Each score beside its baseline, and the number of examples behind it where known."""
    counts = bool(report.counts)
    rows = [f"{'metric':<28}{'model':>10}{'baseline':>10}" + (f"{'examples':>10}" if counts else "")]
    for name, value in report.scores.items():
        base = report.baselines.get(name)
        row = f"{name:<28}{float(value):>10.4f}{'' if base is None else f'{base:>10.4f}':>10}"
        rows.append(row + (f"{report.counts.get(name, ''):>10}" if counts else ""))
    return "\n".join(rows)
