"""Compact token fusion: training FLOPs and step time of each placement, side by side in one run.

    python bench/fusion.py                         # every setting, fp32 and bf16 step times
    python bench/fusion.py --precisions bf16 --repeats 3

Each row is one training step of the demo recipe's task on one random batch: pretraining
(contrastive + captioning, ``PretrainTask.loss``) on images at the recipe's batch of 128, and
video QA (``VQATask.loss``) on 16-frame clips at its batch of 64. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` over forward and backward (a multiply-add counts 2;
matrix multiplies, convolutions and attention), per step and relative to the row's baseline
(the demo model, or the demo video model). Step time is forward, backward and an AdamW step,
the median of ``--repeats`` steps after ``--warmup``, every setting timed in turn in each round
(``report.median_step_seconds``); bf16 is mixed precision (fp32 weights under torch.autocast), as
``--trainer.precision=bf16-mixed`` trains.

The settings (``MammutConfig`` fields over configs/model/demo.yaml or demo_video.yaml):
- the learner in the ViT after block k (``fusion_vision_block``), with S learned tokens;
- the learner before the decoder's cross-attention only (``decoder_fusion: once``);
- iterative fusion, each cross-attention layer learning its tokens again with the prompt
  (``decoder_fusion: iterative``), alone and with the learner in the ViT;
- a larger model with fusion (configs/model/demo_fusion_large.yaml);
- the video model with its 106 tube tokens reduced the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from mammut.data.batch import ImageTextBatch, VQABatch
from mammut.model import Mammut, MammutConfig
from mammut.tasks.pretrain import PretrainTask
from mammut.tasks.vqa import VQATask
from report import markdown_table, median_step_seconds, publish, random_batch, step_parser

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "model"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
DEMO_VOCAB = 465  # the demo tokenizer's (data/demo/tokenizer.json, trained by `make data` on the captions)

IMAGE_SETTINGS = [
    ("baseline: demo model (configs/model/demo.yaml)", {}),
    ("ViT, after block 0, S=8 (configs/model/demo_fusion.yaml)", dict(fusion_vision_block=0)),
    ("ViT, after block 0, S=4", dict(fusion_vision_block=0, fusion_tokens=4)),
    ("ViT, after block 0, S=16", dict(fusion_vision_block=0, fusion_tokens=16)),
    ("ViT, after block 1, S=8", dict(fusion_vision_block=1)),
    ("before cross-attention only, S=8", dict(decoder_fusion="once")),
    ("iterative, every cross-attention layer, S=8", dict(decoder_fusion="iterative")),
    ("ViT after block 0 + iterative, S=8", dict(fusion_vision_block=0, decoder_fusion="iterative")),
    ("larger: ViT 8 blocks, decoder 6, ViT after block 0, S=8 (demo_fusion_large.yaml)", "demo_fusion_large.yaml"),
]
VIDEO_SETTINGS = [
    ("video baseline: 106 tube tokens (configs/model/demo_video.yaml)", {}),
    ("video, ViT after block 0, S=8 (configs/model/demo_video_fusion.yaml)", "demo_video_fusion.yaml"),
    ("video, ViT after block 0, S=16", dict(fusion_vision_block=0, fusion_tokens=16)),
    ("video, ViT after block 1, S=8", dict(fusion_vision_block=1)),
]


def architecture(base: str, setting: dict | str) -> MammutConfig:
    fields = yaml.safe_load((CONFIGS / (setting if isinstance(setting, str) else base)).read_text())
    overrides = setting if isinstance(setting, dict) else {}
    return MammutConfig(**{**fields, "vocab_size": DEMO_VOCAB, **overrides})


def pretrain_step(config: MammutConfig, batch_size: int, seed: int):
    """The model, and a function that computes the pretraining loss of one fixed batch."""
    torch.manual_seed(seed)
    model, task = Mammut(config).train(), PretrainTask()
    images, tokens = random_batch(config, batch_size, torch.Generator().manual_seed(seed))
    batch = ImageTextBatch(images, tokens, torch.arange(batch_size))
    return model, lambda: task.loss(model, batch).total


def video_qa_step(config: MammutConfig, batch_size: int, seed: int):
    """The model, and a function that computes the answer loss of one fixed batch of clips."""
    torch.manual_seed(seed)
    model, task = Mammut(config).train(), VQATask()
    generator = torch.Generator().manual_seed(seed)
    _, tokens = random_batch(config, batch_size, generator)
    clips = torch.randn(batch_size, 3, config.video_frames, config.image_size, config.image_size, generator=generator)
    answer_start = torch.randint(4, config.context_length // 2, (batch_size,), generator=generator)
    batch = VQABatch(clips, tokens, answer_start, torch.arange(batch_size), [""] * batch_size, [[]] * batch_size)
    return model, lambda: task.loss(model, batch).total


def training_flops(loss) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        loss().backward()
    return counter.get_total_flops()


def timed_step(model: Mammut, loss, dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = step_parser(__doc__)
    parser.set_defaults(repeats=5, warmup=1)
    parser.add_argument("--video-batch-size", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    groups = [("demo.yaml", IMAGE_SETTINGS, pretrain_step, args.batch_size, "pretraining"),
              ("demo_video.yaml", VIDEO_SETTINGS, video_qa_step, args.video_batch_size, "video QA")]
    rows, steps = [], {}
    for base, settings, make_step, batch_size, task in groups:
        baseline_flops = None
        for name, setting in settings:
            config = architecture(base, setting)
            model, loss = make_step(config, batch_size, args.seed)
            flops = training_flops(loss)
            model.zero_grad(set_to_none=True)
            baseline_flops = baseline_flops or flops
            tokens = model.encode_image(torch.zeros(1, 3, *(() if task == "pretraining" else (config.video_frames,)),
                                                    config.image_size, config.image_size)).shape[1]
            cross_attended = tokens if config.decoder_fusion == "none" else config.fusion_tokens
            parameters = sum(p.numel() for p in model.parameters())
            rows.append([name, task, batch_size, f"{tokens} / {cross_attended}", f"{parameters / 1e6:.2f}",
                         f"{flops / 1e9:.1f}",
                         f"{flops / baseline_flops:.3f}"])
            print(" | ".join(str(cell) for cell in rows[-1]), flush=True)  # FLOPs first: timing takes long
            for precision in args.precisions:
                steps[(name, precision)] = timed_step(model, loss, PRECISIONS[precision])
    seconds = median_step_seconds(steps, args.warmup, args.repeats)

    for row in rows:
        name = row[0]
        baseline = next(r[0] for r in rows if r[1] == row[1])
        for precision in args.precisions:
            row += [f"{seconds[(name, precision)]:.2f}",
                    f"{seconds[(name, precision)] / seconds[(baseline, precision)]:.2f}×"]
    headers = ["setting", "task step", "batch", "visual tokens: image embedding / cross-attention", "params (M)",
               "training GFLOPs per step", "× baseline FLOPs"]
    for precision in args.precisions:
        headers += [f"step s ({precision})", f"× baseline ({precision})"]
    notes = (f"Training FLOPs per step (forward + backward) by `torch.utils.flop_counter.FlopCounterMode`; "
             f"vocabulary {DEMO_VOCAB} (the demo tokenizer); step time is the median of {args.repeats} steps "
             f"(forward, backward, AdamW) after {args.warmup}, all settings timed in turn, {args.threads} threads. "
             "Visual tokens: class token + patch, tube or learned tokens, as the image embedding sees them, and as "
             "each cross-attention layer sees them (iterative fusion learns its S again in each layer).")
    publish("Token fusion: training FLOPs and step time per placement", f"{markdown_table(headers, rows)}\n\n{notes}",
            args.results)


if __name__ == "__main__":
    main()
