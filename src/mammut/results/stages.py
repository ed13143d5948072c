"""The chain of runs behind every results table: what a user runs, in the order they run it.

Each stage is one ``mammut fit`` of a shipped recipe, exactly as the docs give it; the fine-tuning
stages start from the ``pretrain`` stage's final checkpoint (``last.ckpt``, the state after its
last step, as ``make finetune-vqa CKPT=...`` takes it). Baselines that need a run of their own
(from random weights, a single frame, each task alone) are stages too; those computed from the
data (majority answer, most frequent caption, chance, class prior) are logged by every run
beside its metrics.

A study is a further set of stages that asks one question of the chain's runs, each stage
changing one thing against the chain stage it is compared with (a seed, the tokenizer, token
fusion, a detection ingredient). Studies run only when asked for (``--study``), with the chain
stages they start from and compare with; their tables are written beside the chain's.

Every stage validates at its last step (the runner refuses a record whose final state was never
measured), so a stage that changes ``max_steps`` sets a ``val_check_interval`` dividing it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    title: str                       # what the run is, as a table row says it
    configs: tuple[str, ...]         # recipe, then overlays
    overrides: tuple[str, ...] = ()  # command-line settings beyond the recipe
    init_from: str | None = None     # the stage whose final checkpoint it starts from
    # Commands the stage needs first, each ``python -m <module> <arguments>`` (e.g. a tokenizer to train).
    prepare: tuple[tuple[str, ...], ...] = ()
    # The metrics the headline table quotes: (label, tag). Every other val scalar is in the stage's own table.
    headline: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def preparations(self) -> list[str]:
        """The ``prepare`` commands as a user types them."""
        return [shlex.join(["python", "-m", *command]) for command in self.prepare]

    def arguments(self, checkpoint: str | None) -> list[str]:
        """``mammut fit`` arguments of the run (without where it logs)."""
        configs = [argument for config in self.configs for argument in ("--config", config)]
        start = [f"--model.init_from={checkpoint}"] if self.init_from else []
        return ["fit", *configs, *start, *self.overrides]


PRETRAIN_HEADLINE = (("image→text R@1", "pretrain/image_to_text/R@1"), ("text→image R@1", "pretrain/text_to_image/R@1"),
                     ("CIDEr-D", "pretrain/CIDEr-D"), ("zero-shot top-1", "pretrain/zeroshot/demo/top1"))
VQA_HEADLINE = (("VQA accuracy", "vqa/accuracy"),)
JOINT_HEADLINE = PRETRAIN_HEADLINE[:3] + VQA_HEADLINE  # configs/multitask.yaml validates no zero-shot set
DETECTION_HEADLINE = (("AP", "detection/AP"), ("AP novel", "detection/AP_novel"), ("AP base", "detection/AP_base"))
VIDEO_QA_HEADLINE = (("accuracy", "vqa/accuracy"),)  # video QA is the VQA task on clips: its metrics are vqa/

CHAIN: tuple[Stage, ...] = (
    Stage("pretrain", "pretraining (`make pretrain`)", ("configs/pretrain.yaml",), headline=PRETRAIN_HEADLINE),
    Stage("vqa", "VQA, full fine-tuning (`make finetune-vqa`)", ("configs/finetune_vqa.yaml",),
          init_from="pretrain", headline=VQA_HEADLINE),
    Stage("vqa_lora", "VQA, LoRA (`make finetune-vqa-lora`)",
          ("configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"), init_from="pretrain", headline=VQA_HEADLINE),
    Stage("detection", "open-vocabulary detection (`make finetune-detection`)", ("configs/finetune_detection.yaml",),
          init_from="pretrain",
          headline=DETECTION_HEADLINE),
    Stage("detection_scratch", "detection from random weights (baseline)", ("configs/finetune_detection.yaml",),
          headline=DETECTION_HEADLINE),
    Stage("video_caption", "video captioning (`make finetune-video`, first half)",
          ("configs/finetune_video_caption.yaml",), init_from="pretrain",
          headline=(("CIDEr-D", "video_caption/CIDEr-D"),)),
    Stage("video_qa", "video QA (`make finetune-video`, second half)", ("configs/finetune_video_qa.yaml",),
          init_from="pretrain", headline=VIDEO_QA_HEADLINE),
    Stage("video_qa_single_frame", "video QA from a single frame (baseline)", ("configs/finetune_video_qa.yaml",),
          overrides=("--data.single_frame=true",), init_from="pretrain", headline=VIDEO_QA_HEADLINE),
    Stage("multitask", "pretraining and VQA jointly, from random weights (`make multitask`)",
          ("configs/multitask.yaml",), headline=JOINT_HEADLINE),
    Stage("multitask_fixed", "the joint run with fixed task weights", ("configs/multitask.yaml",),
          overrides=("--model.task_weighting=fixed",), headline=JOINT_HEADLINE),
    Stage("multitask_adaptive", "the joint run with adaptive task weights (learning progress)",
          ("configs/multitask.yaml",), overrides=("--model.task_weighting=adaptive",),
          headline=JOINT_HEADLINE),
    Stage("vqa_scratch_1000", "VQA alone from random weights, 1 000 steps (baseline of the joint run)",
          ("configs/finetune_vqa.yaml",),
          overrides=("--trainer.max_steps=1000", "--trainer.val_check_interval=500", "--model.lr=2e-3",
                     "--model.warmup_steps=100"), headline=VQA_HEADLINE),
)


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    question: str                    # what it measures, and against which chain stages
    compare: tuple[str, ...]         # chain stages its table shows first, for comparison
    stages: tuple[Stage, ...]


# The default tokenizer (`make data`) learns the training captions alone; questions and answers are
# written in pieces of caption words (docs/vqa.md, "The figure from today's defaults").
CAPTIONS_TOKENIZER = ("mammut.data.tokenizer", "--captions", "data/demo/annotations/captions_train.json",
                      "--out", "data/demo/tokenizer_captions.json")
WITH_CAPTIONS_TOKENIZER = "--data.tokenizer=tokenizer_captions.json"  # relative to the data root
# The previous default: all of the demo's training text, so that every question and answer word is one token.
ALL_TEXT_TOKENIZER = ("mammut.data.tokenizer", "--captions", "data/demo/annotations/captions_train.json",
                      "--instances", "data/demo/annotations/instances_train.json",
                      "--vqa", "data/demo/vqa/v2_OpenEnded_mscoco_train_questions.json",
                      "--vqa", "data/demo/vqa/v2_mscoco_train_annotations.json",
                      "--msrvtt", "data/demo/video/train_videodatainfo.json", "--video-qa", "data/demo/video/train_qa.json",
                      "--answers", "data/demo/vqa/v2_mscoco_train_annotations.json",
                      "--answers", "data/demo/video/train_qa.json", "--out", "data/demo/tokenizer_all_text.json")
WITH_ALL_TEXT_TOKENIZER = "--data.tokenizer=tokenizer_all_text.json"
# Captions and every answer word (image and video QA) whole; the questions in pieces of those words.
CAPTIONS_ANSWERS_TOKENIZER = ("mammut.data.tokenizer", "--captions", "data/demo/annotations/captions_train.json",
                              "--answers-only", "data/demo/vqa/v2_mscoco_train_annotations.json",
                              "--answers-only", "data/demo/video/train_qa.json",
                              "--answers", "data/demo/vqa/v2_mscoco_train_annotations.json",
                              "--answers", "data/demo/video/train_qa.json",
                              "--out", "data/demo/tokenizer_captions_answers.json")
WITH_CAPTIONS_ANSWERS_TOKENIZER = "--data.tokenizer=tokenizer_captions_answers.json"
SEED_1 = ("--seed_everything=1", "--data.seed=1")  # the initialisation, and the data's order and caption draws
# The study's pretraining runs are 800 steps, the default before it found that 1 000 lift every task.
STEPS_800 = ("--trainer.max_steps=800", "--trainer.val_check_interval=400")


def _from_checkpoints(suffix: str, start: str, *overrides: str, prepare: tuple = ()) -> tuple[Stage, ...]:
    """VQA and detection, each by its recipe, from the final checkpoint of stage ``start``."""
    return (Stage(f"vqa_{suffix}", f"the VQA recipe from `{start}`", ("configs/finetune_vqa.yaml",),
                  overrides=overrides, init_from=start, prepare=prepare, headline=VQA_HEADLINE),
            Stage(f"detection_{suffix}", f"the detection recipe from `{start}`",
                  ("configs/finetune_detection.yaml",), overrides=overrides, init_from=start, prepare=prepare,
                  headline=DETECTION_HEADLINE))


STUDIES: tuple[Study, ...] = (
    Study("cause", "what moves VQA and detection from the default pretraining checkpoint",
          "Pretraining checkpoints that differ from the default in one thing each, each fine-tuned by the unchanged "
          "VQA recipe, and all but fp32 by the detection recipe too. The steps: `pretrain_800` is the default "
          "before 2026-12-08 (800 steps) against the chain's `pretrain` (1 000). The study's other runs change "
          "one thing against `pretrain_800`: the tokenizer, the seed of the random initialisation and of the "
          "data's order, the precision. The tokenizer of all the demo's text (`alltok`, the default until "
          "2026-12-07: every question and answer word one token) and one of the captions and the answers "
          "(`anstok`: answer words whole, questions in pieces as with the default) are fine-tuned by the LoRA "
          "recipe too. Two seeds of `pretrain_800` and of `alltok` tell the tokenizer's effect from the draw. "
          "The `captok` stages are the default tokenizer through a file of its own: another run of the "
          "`_800` commands. (Best against last needs no run: the default's best checkpoint by mean R@1 is its "
          "last.)",
          ("pretrain", "vqa", "vqa_lora", "detection"),
          (Stage("pretrain_800", "pretraining for 800 steps", ("configs/pretrain.yaml",), overrides=STEPS_800,
                 headline=PRETRAIN_HEADLINE),
           *_from_checkpoints("800", "pretrain_800"),
           Stage("vqa_lora_800", "the LoRA recipe from `pretrain_800`",
                 ("configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"), init_from="pretrain_800",
                 headline=VQA_HEADLINE),
           Stage("pretrain_alltok", "pretraining for 800 steps with the tokenizer of all the demo's text",
                 ("configs/pretrain.yaml",), overrides=(*STEPS_800, WITH_ALL_TEXT_TOKENIZER),
                 prepare=(ALL_TEXT_TOKENIZER,), headline=PRETRAIN_HEADLINE),
           *_from_checkpoints("alltok", "pretrain_alltok", WITH_ALL_TEXT_TOKENIZER, prepare=(ALL_TEXT_TOKENIZER,)),
           Stage("vqa_lora_alltok", "the LoRA recipe from `pretrain_alltok`",
                 ("configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"),
                 overrides=(WITH_ALL_TEXT_TOKENIZER,), init_from="pretrain_alltok",
                 prepare=(ALL_TEXT_TOKENIZER,), headline=VQA_HEADLINE),
           Stage("pretrain_seed1", "pretraining for 800 steps, seed 1", ("configs/pretrain.yaml",),
                 overrides=(*STEPS_800, *SEED_1), headline=PRETRAIN_HEADLINE),
           *_from_checkpoints("seed1", "pretrain_seed1"),
           Stage("pretrain_alltok_seed1", "pretraining for 800 steps with the tokenizer of all the demo's text, seed 1",
                 ("configs/pretrain.yaml",), overrides=(*STEPS_800, WITH_ALL_TEXT_TOKENIZER, *SEED_1),
                 prepare=(ALL_TEXT_TOKENIZER,), headline=PRETRAIN_HEADLINE),
           *_from_checkpoints("alltok_seed1", "pretrain_alltok_seed1", WITH_ALL_TEXT_TOKENIZER,
                              prepare=(ALL_TEXT_TOKENIZER,)),
           Stage("pretrain_captok", "pretraining for 800 steps with the caption-only tokenizer through its own file",
                 ("configs/pretrain.yaml",), overrides=(*STEPS_800, WITH_CAPTIONS_TOKENIZER),
                 prepare=(CAPTIONS_TOKENIZER,), headline=PRETRAIN_HEADLINE),
           *_from_checkpoints("captok", "pretrain_captok", WITH_CAPTIONS_TOKENIZER, prepare=(CAPTIONS_TOKENIZER,)),
           Stage("vqa_lora_captok", "the LoRA recipe from `pretrain_captok`",
                 ("configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"),
                 overrides=(WITH_CAPTIONS_TOKENIZER,), init_from="pretrain_captok",
                 prepare=(CAPTIONS_TOKENIZER,), headline=VQA_HEADLINE),
           Stage("pretrain_anstok", "pretraining for 800 steps with the tokenizer of the captions and the answers",
                 ("configs/pretrain.yaml",), overrides=(*STEPS_800, WITH_CAPTIONS_ANSWERS_TOKENIZER),
                 prepare=(CAPTIONS_ANSWERS_TOKENIZER,), headline=PRETRAIN_HEADLINE),
           Stage("vqa_anstok", "the VQA recipe from `pretrain_anstok`", ("configs/finetune_vqa.yaml",),
                 overrides=(WITH_CAPTIONS_ANSWERS_TOKENIZER,), init_from="pretrain_anstok",
                 prepare=(CAPTIONS_ANSWERS_TOKENIZER,), headline=VQA_HEADLINE),
           Stage("vqa_lora_anstok", "the LoRA recipe from `pretrain_anstok`",
                 ("configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"),
                 overrides=(WITH_CAPTIONS_ANSWERS_TOKENIZER,), init_from="pretrain_anstok",
                 prepare=(CAPTIONS_ANSWERS_TOKENIZER,), headline=VQA_HEADLINE),
           Stage("pretrain_fp32", "pretraining for 800 steps in fp32 (the recipe: bf16 mixed precision)",
                 ("configs/pretrain.yaml",), overrides=(*STEPS_800, "--trainer.precision=32-true"),
                 headline=PRETRAIN_HEADLINE),
           Stage("vqa_fp32", "the VQA recipe from `pretrain_fp32`", ("configs/finetune_vqa.yaml",), init_from="pretrain_fp32",
                 headline=VQA_HEADLINE))),
    Study("fusion", "compact token fusion at equal steps",
          "The recipes with a TokenLearner (docs/token-fusion.md) against the same recipes without: pretraining "
          "(R@1, CIDEr-D), VQA from its checkpoint, video QA with 8 learned tokens in place of the tube tokens, "
          "and a larger model with fusion at no more training FLOPs per step than the demo model.",
          ("pretrain", "vqa", "video_qa"),
          (Stage("pretrain_fusion", "pretraining with 8 learned tokens after ViT block 0",
                 ("configs/pretrain.yaml", "configs/pretrain_fusion.yaml"), headline=PRETRAIN_HEADLINE),
           Stage("vqa_fusion", "VQA with 8 learned tokens, from `pretrain_fusion`", ("configs/finetune_vqa.yaml",),
                 overrides=("--model.architecture=configs/model/demo_fusion.yaml",), init_from="pretrain_fusion",
                 headline=VQA_HEADLINE),
           Stage("vqa_fusion_iterative", "VQA with 8 learned tokens and iterative fusion with the question, "
                 "from `pretrain_fusion`", ("configs/finetune_vqa.yaml",),
                 overrides=("--model.architecture=configs/model/demo_fusion.yaml",
                            "--model.architecture.decoder_fusion=iterative"),
                 init_from="pretrain_fusion", headline=VQA_HEADLINE),
           Stage("video_qa_fusion", "video QA with 8 learned tokens in place of 106 tube tokens, from "
                 "`pretrain_fusion`", ("configs/finetune_video_qa.yaml",),
                 overrides=("--model.architecture=configs/model/demo_video_fusion.yaml",), init_from="pretrain_fusion",
                 headline=VIDEO_QA_HEADLINE),
           Stage("pretrain_fusion_large", "pretraining a larger model (ViT 8 blocks, decoder 6) with 8 learned tokens",
                 ("configs/pretrain.yaml", "configs/pretrain_fusion.yaml"),
                 overrides=("--model.architecture=configs/model/demo_fusion_large.yaml",), headline=PRETRAIN_HEADLINE),
           Stage("vqa_fusion_large", "VQA with the larger model with fusion, from `pretrain_fusion_large`",
                 ("configs/finetune_vqa.yaml",),
                 overrides=("--model.architecture=configs/model/demo_fusion_large.yaml",),
                 init_from="pretrain_fusion_large", headline=VQA_HEADLINE))),
    Study("detection", "what each ingredient gives the novel classes",
          "Each detection ingredient on its own (docs/detection.md) against the plain recipe: a random prompt "
          "template per step and the text side tuned, from the same `pretrain` checkpoint; cropped positional "
          "embeddings, from a pretraining of their own (beside `pretrain`). Self-training has its own command "
          "(`make finetune-detection-selftrain`).",
          ("pretrain", "detection", "detection_scratch"),
          (Stage("pretrain_cpe", "pretraining with cropped positional embeddings (RO-ViT)", ("configs/pretrain.yaml",),
                 overrides=("--model.architecture=configs/model/demo_cpe.yaml",), headline=PRETRAIN_HEADLINE),
           Stage("detection_cpe", "detection from `pretrain_cpe`", ("configs/finetune_detection.yaml",),
                 init_from="pretrain_cpe", headline=DETECTION_HEADLINE),
           Stage("detection_random_prompts", "detection with a random prompt template per step",
                 ("configs/finetune_detection.yaml",), overrides=("--model.train_prompts=random",),
                 init_from="pretrain", headline=DETECTION_HEADLINE),
           Stage("detection_text", "detection with the text side tuned at a tenth of the learning rate",
                 ("configs/finetune_detection.yaml", "configs/finetune_detection_text.yaml"), init_from="pretrain",
                 headline=DETECTION_HEADLINE))),
)

# Every stage, each after the stage it starts from: the chain's, then each study's.
ALL_STAGES: tuple[Stage, ...] = CHAIN + tuple(stage for study in STUDIES for stage in study.stages)


def select(names: list[str] | None, studies: list[str] = ()) -> list[Stage]:
    """The stages of ``names`` and of the ``studies`` (the whole chain when neither is given), in
    order, with the stages they start from; a study brings the chain stages it compares with too."""
    by_name = {stage.name: stage for stage in ALL_STAGES}
    by_study = {study.name: study for study in STUDIES}
    if names is None and not studies:
        return list(CHAIN)
    unknown = [name for name in names or () if name not in by_name] + [name for name in studies if name not in by_study]
    if unknown:
        raise ValueError(f"unknown stage(s) or stud(ies) {unknown}; the stages are {list(by_name)}, "
                         f"the studies {list(by_study)}")
    wanted = set(names or ()) | {stage for name in studies
                                 for stage in (*by_study[name].compare, *(s.name for s in by_study[name].stages))}
    while starts := {by_name[name].init_from for name in wanted if by_name[name].init_from} - wanted:
        wanted |= starts
    return [stage for stage in ALL_STAGES if stage.name in wanted]
