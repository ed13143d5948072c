"""Training-step cost of the patch embeddings: plain patches, overlapping windows, a conv stem.

    python bench/patch_embedding.py                          # tiny preset as in configs/pretrain.yaml
    python bench/patch_embedding.py --repeats 3 --warmup 1   # a quick check

Each setting is the pretraining step of bench/train_throughput.py (forward, contrastive and
captioning losses, backward, AdamW) on one fixed random batch, bf16-mixed, at the shape of
configs/pretrain.yaml (tiny preset, context 24) with only the patch embedding changed. Timing
rounds alternate the order of the settings, so load changes on a shared machine hit all alike;
the table gives the median step and its ratio to plain patches.
"""

from __future__ import annotations

import torch

from mammut.model import preset
from report import markdown_table, median_step_seconds, publish, random_batch, step_parser
from train_throughput import mammut_trainee

SETTINGS = {
    "plain 8-pixel patches": dict(patch_overlap=0),
    "16-pixel windows (patch_overlap 4)": dict(patch_overlap=4),
    "conv stem": dict(patch_embedding="conv_stem"),
}


def main() -> None:
    args = step_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)

    trainees, batches = {}, {}
    for name, overrides in SETTINGS.items():
        config = preset(args.preset, context_length=24, **overrides)
        torch.manual_seed(0)
        trainees[name] = mammut_trainee(config, lr=1e-4)
        batches[name] = random_batch(config, args.batch_size, torch.Generator().manual_seed(0))
    step_flops = {name: trainee.flops(*batches[name], "bf16") / args.batch_size for name, trainee in trainees.items()}
    median = median_step_seconds({name: lambda name=name: trainees[name].step(*batches[name], "bf16")
                                  for name in trainees}, args.warmup, args.repeats)
    plain = median[next(iter(median))]
    rows = [[name, f"{trainees[name].parameter_count:,}", f"{step_flops[name] / 1e9:.2f}",
             f"{seconds * 1e3:.0f}", f"{seconds / plain:.2f}"] for name, seconds in median.items()]
    table = markdown_table(["patch embedding", "parameters", "GFLOP / image (fwd + bwd)", "ms / step",
                            "step time / plain patches"], rows)
    notes = (f"Preset `{args.preset}`, context 24, batch {args.batch_size}, bf16-mixed, {args.warmup} warm-up and "
             f"{args.repeats} timed steps per setting, medians.")
    publish("Pretraining step cost by patch embedding", f"{table}\n\n{notes}", args.results)


if __name__ == "__main__":
    main()
