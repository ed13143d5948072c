"""Does decoding keep up? Clips per second from the video QA loader, per backend, against the
clips per second that a training step consumes.

    python bench/video_loader.py                     # data/demo (make data), 2 workers, batch 64
    python bench/video_loader.py --batches 20

The loader is ``VideoQADataModule``'s training loader as ``configs/finetune_video_qa.yaml``
builds it (random segment sampling, 16 frames of 64x64, 2 worker processes), timed over
``--batches`` batches after its first (worker start-up). The step is the full fine-tuning
step of the same config (tube encoder, generative pass, answer loss, AdamW) on one of those
batches, bf16 autocast, median of ``--repeats``. The two are timed one after the other, each
with the machine to itself; in a real run they share the cores. Clips leave the workers as
uint8; normalising them in the training process is counted with the step.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from mammut.cli import cpu_has_native_bf16
from mammut.model import MammutConfig
from mammut.tasks.video import VideoQADataModule
from mammut.tasks.vqa import VQAModule
from report import markdown_table, median_step_seconds, publish, step_parser
from vqa_step import step_function


def loader_clips_per_second(data: VideoQADataModule, batches: int) -> tuple[float, object]:
    iterator = iter(data.train_dataloader())
    first = next(iterator)  # the workers start and fill their queues
    start = time.perf_counter()
    clips = 0
    for _ in range(batches):
        clips += len(next(iterator))
    return clips / (time.perf_counter() - start), first


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--root", default="data/demo")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per backend")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_native_bf16() else "fp32",
                        help="of the step: bf16 autocast (as bf16-mixed) or fp32; bf16 where the CPU runs it natively")
    parser.set_defaults(batch_size=64, repeats=5, warmup=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    architecture = yaml.safe_load(Path("configs/model/demo_video.yaml").read_text())
    rows, batch = [], None
    for backend in ("decord", "pyav"):
        data = VideoQADataModule(root=args.root, backend=backend, batch_size=args.batch_size,
                                 num_workers=args.workers)
        data.connect(image_size=architecture["image_size"], context_length=architecture["context_length"],
                     frames=architecture["video_frames"])
        data.setup("fit")
        rate, batch = loader_clips_per_second(data, args.batches)
        rows.append([backend, f"{rate:.0f}"])

    tokenizer = data.tokenizer
    config = MammutConfig(**architecture, vocab_size=tokenizer.vocab_size,
                          **{f"{name}_id": i for name, i in tokenizer.special_token_ids.items() if name != "sep"})
    # The clips arrive as uint8 and are normalised in the training process (on its device): that
    # work is counted with the step's.
    raw, batch = batch, data.on_after_batch_transfer(batch, 0)
    step = step_function(VQAModule(architecture=config).train(), args.precision == "bf16")
    timed = median_step_seconds({"normalise": lambda: data.on_after_batch_transfer(raw, 0),
                                 "step": lambda: step(batch.images, batch.tokens, batch.answer_start)},
                                args.warmup, args.repeats)
    seconds = timed["normalise"] + timed["step"]
    consumed = len(batch) / seconds
    table = markdown_table(["backend", "loader clips/s", "training step clips/s", "loader / step"],
                           [[backend, rate, f"{consumed:.0f}", f"{float(rate) / consumed:.1f}×"]
                            for backend, rate in rows])
    notes = (f"Video QA on the demo clips: batch {args.batch_size}, {args.workers} loader workers, "
             f"{architecture['video_frames']} frames of {architecture['image_size']}x{architecture['image_size']}; "
             f"the step is full fine-tuning of configs/finetune_video_qa.yaml's model in "
             f"{'bf16 autocast' if args.precision == 'bf16' else 'fp32'} "
             f"({timed['step'] * 1e3:.0f} ms per step, and {timed['normalise'] * 1e3:.0f} ms to normalise the batch's "
             f"uint8 clips). Loader and step were timed one after the other.")
    publish("Video decoding against the training step", f"{table}\n\n{notes}", args.results)


if __name__ == "__main__":
    main()
