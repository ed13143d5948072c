"""Training throughput of MaMMUT against open_clip's CoCa at a matched size, in fp32 and bf16.

    python bench/train_throughput.py                              # tiny preset, batch 64
    python bench/train_throughput.py --steps 3 --warmup 1         # a quick check
    python bench/train_throughput.py --preset small --batch-size 32

A step is forward, both losses, backward and an AdamW step on one fixed random batch (data
loading is left out). MaMMUT trains with ContrastiveLoss + caption_loss, CoCa with open_clip's
CoCaLoss (both weights 1). bf16 is mixed precision: fp32 weights under torch.autocast.

Per model and precision the table gives images/s (median step), the model FLOPs of one step
(forward + backward, counted once with FlopCounterMode), the achieved FLOP/s and the MFU: achieved
over the matmul ceiling of this machine in the same precision (median of 2048^3 matmuls timed
between the steps). Timing rounds visit every (model, precision) in turn, in reverse order every
other round, so load changes on a shared machine hit all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.loss import CoCaLoss
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mammut.model import ContrastiveLoss, Mammut, caption_loss, preset
from report import RESULTS, build_coca, markdown_table, publish, random_batch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}

# FlopCounterMode knows the CUDA attention kernels only; on CPU, F.scaled_dot_product_attention
# runs this one, which would otherwise count as zero.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
}


@dataclass
class Trainee:
    name: str
    model: nn.Module
    loss: Callable[[Tensor, Tensor], Tensor]  # (images, tokens) -> total loss
    optimizer: torch.optim.Optimizer

    def step(self, images: Tensor, tokens: Tensor, precision: str) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = self.loss(images, tokens)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def flops(self, images: Tensor, tokens: Tensor, precision: str) -> int:
        """Model FLOPs of forward + backward; the optimizer step is not model FLOPs."""
        self.optimizer.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = self.loss(images, tokens)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def mammut_trainee(config, lr: float) -> Trainee:
    model = Mammut(config).train()
    contrastive = ContrastiveLoss()

    def loss(images: Tensor, tokens: Tensor) -> Tensor:
        out = model(images, tokens)
        return (contrastive(out.image_embedding, out.text_embedding, out.logit_scale)
                + caption_loss(out.caption_logits, tokens[:, 1:], config.pad_id))

    return Trainee("mammut", model, loss, torch.optim.AdamW(model.parameters(), lr=lr))


def coca_trainee(config, lr: float) -> Trainee:
    model = build_coca(config).train()
    coca_loss = CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=1.0, pad_id=config.pad_id)

    def loss(images: Tensor, tokens: Tensor) -> Tensor:
        out = model(images, tokens)
        contrastive, captioning = coca_loss(out["image_features"], out["text_features"], out["logits"],
                                            out["labels"], out["logit_scale"])
        return contrastive + captioning

    return Trainee("open_clip CoCa", model, loss, torch.optim.AdamW(model.parameters(), lr=lr))


class MatmulCeiling:
    """Seconds of square matmuls per dtype; the ceiling is their median FLOP/s."""

    def __init__(self, size: int, dtypes: list[torch.dtype]):
        self.size = size
        self.operands = {d: (torch.randn(size, size).to(d), torch.randn(size, size).to(d)) for d in dtypes}
        self.seconds: dict[torch.dtype, list[float]] = defaultdict(list)
        for dtype in dtypes:  # first touch: allocation and kernel selection
            self._time(dtype)

    def _time(self, dtype: torch.dtype) -> float:
        a, b = self.operands[dtype]
        start = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - start

    def sample(self, repeats: int) -> None:
        for dtype in self.operands:
            self.seconds[dtype] += [self._time(dtype) for _ in range(repeats)]

    def flops_per_second(self, dtype: torch.dtype) -> float:
        return 2 * self.size ** 3 / statistics.median(self.seconds[dtype])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="mammut size preset; CoCa is built to match")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model and precision")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the ceiling matmuls")
    parser.add_argument("--matmuls", type=int, default=2, help="ceiling matmuls per dtype per round")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the tables are appended to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = preset(args.preset)
    images, tokens = random_batch(config, args.batch_size, torch.Generator().manual_seed(args.seed))
    trainees = []
    for build in (mammut_trainee, coca_trainee):
        torch.manual_seed(args.seed)
        trainees.append(build(config, args.lr))
    runs = [(t, p) for p in args.precisions for t in trainees]

    flops = {}
    for trainee, precision in runs:
        flops[trainee.name, precision] = trainee.flops(images, tokens, precision)
        for _ in range(args.warmup):
            trainee.step(images, tokens, precision)
    ceiling = MatmulCeiling(args.matmul_size, [PRECISIONS[p] for p in args.precisions])

    seconds, losses = defaultdict(list), {}
    for round_index in range(args.steps):
        ceiling.sample(args.matmuls)
        for trainee, precision in runs if round_index % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            losses[trainee.name, precision] = trainee.step(images, tokens, precision)
            seconds[trainee.name, precision].append(time.perf_counter() - start)

    rows, throughput = [], {}
    for trainee, precision in runs:
        key = trainee.name, precision
        step = statistics.median(seconds[key])
        throughput[key] = args.batch_size / step
        achieved = flops[key] / step
        peak = ceiling.flops_per_second(PRECISIONS[precision])
        rows.append([
            trainee.name, precision, f"{trainee.parameter_count / 1e6:.1f}M", f"{step * 1e3:.0f}",
            f"{throughput[key]:.1f}",
            f"{args.batch_size / max(seconds[key]):.1f}–{args.batch_size / min(seconds[key]):.1f}",
            f"{flops[key] / 1e9:.1f}", f"{achieved / 1e9:.1f}", f"{peak / 1e9:.0f}", f"{achieved / peak:.1%}",
            f"{losses[key]:.3f}",
        ])
    table = markdown_table(
        ["model", "precision", "params", "step ms", "images/s", "images/s min–max", "GFLOP/step",
         "achieved GFLOP/s", "matmul ceiling GFLOP/s", "MFU", "last loss"], rows)

    mammut, coca = (t.name for t in trainees)
    ratio_rows = [[f"mammut / CoCa images/s, {p}", f"{throughput[mammut, p] / throughput[coca, p]:.2f}"]
                  for p in args.precisions]
    ratio_rows += [[f"mammut / CoCa FLOPs per step, {p}", f"{flops[mammut, p] / flops[coca, p]:.2f}"]
                   for p in args.precisions[:1]]
    if len(args.precisions) == 2:
        for name in (mammut, coca):
            ratio_rows.append([f"{name} bf16 / fp32 images/s",
                               f"{throughput[name, 'bf16'] / throughput[name, 'fp32']:.2f}"])
    ratios = markdown_table(["ratio", "value"], ratio_rows)

    notes = (f"Preset `{args.preset}`, batch {args.batch_size}, {args.warmup} warm-up and {args.steps} timed steps "
             f"per model and precision, medians; open_clip {open_clip.__version__}. A step is forward, loss, "
             f"backward and AdamW; FLOPs count forward + backward matmuls and attention. The ceiling is the "
             f"median of {args.steps * args.matmuls} {args.matmul_size}³ matmuls per dtype, timed between the steps. "
             f"MaMMUT runs its decoder twice per step (contrastive and generative pass), so it does more FLOPs "
             f"per image than CoCa.")
    publish("Training throughput: mammut vs open_clip CoCa", f"{table}\n\n{ratios}\n\n{notes}", args.results)


if __name__ == "__main__":
    main()
