"""Training-step time of VQA fine-tuning: full fine-tuning against eP-ALM-style PEFT.

    python bench/vqa_step.py                          # tiny preset, batch 128, bf16-mixed
    python bench/vqa_step.py --repeats 3 --warmup 1   # a quick check

Both settings run the real VQA task code (``VQATask.encode``, the generative pass and
``answer_loss``) on the same random batch of images and question-answer sequences, with
AdamW over the trainable parameters. Full fine-tuning trains every weight; PEFT trains the
prefix of configs/finetune_vqa_peft.yaml alone, with the encoder run without a graph.
Timing rounds alternate the order of the settings, so load changes on a shared machine hit
both alike; the table gives the median step.
"""

from __future__ import annotations

import torch

from mammut.model import PrefixConfig, preset
from mammut.tasks.vqa import VQAModule, answer_loss
from report import markdown_table, median_step_seconds, publish, random_batch, step_parser


def step_function(module: VQAModule):
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    pad_id = module.architecture.pad_id

    def step(images, tokens, answer_start):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            visual_tokens, prefix = module.tasks["vqa"].encode(module.model, images)
            logits = module.model.caption_logits(tokens[:, :-1], visual_tokens, prefix)
            loss = answer_loss(logits, tokens, answer_start, pad_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    args = step_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)

    config = preset(args.preset, context_length=24, patch_embedding="conv_stem")  # as configs/finetune_vqa.yaml
    images, tokens = random_batch(config, args.batch_size, torch.Generator().manual_seed(0))
    answer_start = torch.full((args.batch_size,), config.context_length // 2)
    peft = PrefixConfig(prompt_tokens=8, visual_layers=[-3, -2, -1])  # as configs/finetune_vqa_peft.yaml
    settings = {
        "full fine-tuning": VQAModule(architecture=config),
        "PEFT (eP-ALM prefix)": VQAModule(architecture=config, peft=peft, freeze=["model.*"]),
    }
    steps = {name: step_function(module.train()) for name, module in settings.items()}
    median = median_step_seconds({name: lambda step=step: step(images, tokens, answer_start)
                                  for name, step in steps.items()}, args.warmup, args.repeats)
    rows = []
    for name, module in settings.items():
        trainable, total = module.parameter_counts()
        rows.append([name, f"{trainable:,}", f"{total:,}", f"{100 * trainable / total:.2f}%",
                     f"{median[name] * 1e3:.0f}", f"{args.batch_size / median[name]:.0f}"])
    full, peft_name = list(settings)
    table = markdown_table(["setting", "trainable", "total", "trainable share", "ms / step", "questions/s"], rows)
    notes = (f"Preset `{args.preset}` (context 24, conv stem as in the VQA configs), bf16 autocast, "
             f"batch {args.batch_size}, {args.warmup} warm-up and "
             f"{args.repeats} timed steps per setting, medians. PEFT step / full step: "
             f"{median[peft_name] / median[full]:.2f}.")
    publish("VQA training step: full fine-tuning vs eP-ALM-style PEFT", f"{table}\n\n{notes}", args.results)


if __name__ == "__main__":
    main()
