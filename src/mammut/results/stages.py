"""The chain of runs behind every results table: what a user runs, in the order they run it.

Each stage is one ``mammut fit`` of a shipped recipe, exactly as the docs give it; the fine-tuning
stages start from the ``pretrain`` stage's final checkpoint (``last.ckpt``, the state after its
last step, as ``make finetune-vqa CKPT=...`` takes it). Baselines that need a run of their own
(from random weights, a single frame, each task alone) are stages too; those computed from the
data (majority answer, most frequent caption, chance, class prior) are logged by every run
beside its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    title: str                       # what the run is, as a table row says it
    configs: tuple[str, ...]         # recipe, then overlays
    overrides: tuple[str, ...] = ()  # command-line settings beyond the recipe
    init_from: str | None = None     # the stage whose final checkpoint it starts from
    # The metrics the headline table quotes: (label, tag). Every other val scalar is in the stage's own table.
    headline: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def arguments(self, checkpoint: str | None) -> list[str]:
        """``mammut fit`` arguments of the run (without where it logs)."""
        configs = [argument for config in self.configs for argument in ("--config", config)]
        start = [f"--model.init_from={checkpoint}"] if self.init_from else []
        return ["fit", *configs, *start, *self.overrides]


PRETRAIN_HEADLINE = (("image→text R@1", "pretrain/image_to_text/R@1"), ("text→image R@1", "pretrain/text_to_image/R@1"),
                     ("CIDEr-D", "pretrain/CIDEr-D"), ("zero-shot top-1", "pretrain/zeroshot/demo/top1"))
VQA_HEADLINE = (("VQA accuracy", "vqa/accuracy"),)
JOINT_HEADLINE = PRETRAIN_HEADLINE[:3] + VQA_HEADLINE  # configs/multitask.yaml validates no zero-shot set

CHAIN: tuple[Stage, ...] = (
    Stage("pretrain", "pretraining (`make pretrain`)", ("configs/pretrain.yaml",), headline=PRETRAIN_HEADLINE),
    Stage("vqa", "VQA, full fine-tuning (`make finetune-vqa`)", ("configs/finetune_vqa.yaml",),
          init_from="pretrain", headline=VQA_HEADLINE),
    Stage("vqa_lora", "VQA, LoRA (`make finetune-vqa-lora`)",
          ("configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"), init_from="pretrain", headline=VQA_HEADLINE),
    Stage("detection", "open-vocabulary detection (`make finetune-detection`)", ("configs/finetune_detection.yaml",),
          init_from="pretrain",
          headline=(("AP", "detection/AP"), ("AP novel", "detection/AP_novel"), ("AP base", "detection/AP_base"))),
    Stage("detection_scratch", "detection from random weights (baseline)", ("configs/finetune_detection.yaml",),
          headline=(("AP", "detection/AP"), ("AP novel", "detection/AP_novel"), ("AP base", "detection/AP_base"))),
    Stage("video_caption", "video captioning (`make finetune-video`, first half)",
          ("configs/finetune_video_caption.yaml",), init_from="pretrain",
          headline=(("CIDEr-D", "video_caption/CIDEr-D"),)),
    Stage("video_qa", "video QA (`make finetune-video`, second half)", ("configs/finetune_video_qa.yaml",),
          init_from="pretrain", headline=(("accuracy", "video_qa/accuracy"),)),
    Stage("video_qa_single_frame", "video QA from a single frame (baseline)", ("configs/finetune_video_qa.yaml",),
          overrides=("--data.single_frame=true",), init_from="pretrain", headline=(("accuracy", "video_qa/accuracy"),)),
    Stage("multitask", "pretraining and VQA jointly, from random weights (`make multitask`)",
          ("configs/multitask.yaml",), headline=JOINT_HEADLINE),
    Stage("multitask_fixed", "the joint run with fixed task weights", ("configs/multitask.yaml",),
          overrides=("--model.task_weighting=fixed",), headline=JOINT_HEADLINE),
    Stage("multitask_adaptive", "the joint run with adaptive task weights (learning progress)",
          ("configs/multitask.yaml",), overrides=("--model.task_weighting=adaptive",),
          headline=JOINT_HEADLINE),
    Stage("pretrain_1000", "pretraining alone, 1 000 steps (baseline of the joint run)", ("configs/pretrain.yaml",),
          overrides=("--trainer.max_steps=1000",), headline=PRETRAIN_HEADLINE),
    Stage("vqa_scratch_1000", "VQA alone from random weights, 1 000 steps (baseline of the joint run)",
          ("configs/finetune_vqa.yaml",),
          overrides=("--trainer.max_steps=1000", "--model.lr=2e-3", "--model.warmup_steps=100"), headline=VQA_HEADLINE),
)


def select(names: list[str] | None) -> list[Stage]:
    """The chain's stages of ``names`` (all when None), in chain order, with the stages they start from."""
    by_name = {stage.name: stage for stage in CHAIN}
    if names is None:
        return list(CHAIN)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the chain has {list(by_name)}")
    wanted = set(names) | {by_name[name].init_from for name in names if by_name[name].init_from}
    return [stage for stage in CHAIN if stage.name in wanted]
