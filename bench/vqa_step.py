"""Training-step time and memory of VQA fine-tuning: full fine-tuning against the PEFT modes.

    python bench/vqa_step.py                          # tiny preset, batch 128, bf16 where the CPU has it
    python bench/vqa_step.py --repeats 3 --warmup 1   # a quick check

Four settings run the real VQA task code (``VQATask.encode``, the generative pass and
``answer_loss``) on the same random batch of images and question-answer sequences, with AdamW
over the trainable parameters: full fine-tuning; the eP-ALM prefix of
configs/finetune_vqa_peft.yaml on the frozen model; the LoRA adapters of
configs/finetune_vqa_lora.yaml; and both together. The PEFT settings are read from those
files. Timing rounds alternate the order of the settings, so load changes on a shared machine
hit all alike; the table gives the median step.

Memory: the peak resident set size during a step above the resting size before it
(activations, gradients and temporaries; Linux's VmHWM, reset through /proc/self/clear_refs),
measured for each setting in a fresh process with large buffers returned to the system on free,
as bench/memory.py does, so that no setting reuses another's freed memory; and the AdamW state
and gradients kept for the trainable parameters (fp32, counted). torch keeps no allocator
statistics on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mammut.cli import cpu_has_native_bf16
from mammut.data.tokenizer import CaptionTokenizer
from mammut.model import PrefixConfig, preset
from mammut.model.lora import LoraConfig
from mammut.tasks.vqa import VQAModule, answer_loss
from memory import reset_peak, status_bytes
from report import markdown_table, median_step_seconds, publish, random_batch, step_parser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MIB = 2 ** 20


def overlay(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]


def step_function(module: VQAModule, bf16: bool):
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    pad_id = module.architecture.pad_id

    def step(images, tokens, answer_start):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            visual_tokens, prefix = module.tasks["vqa"].encode(module.model, images)
            logits = module.model.caption_logits(tokens[:, :-1], visual_tokens, prefix)
            loss = answer_loss(logits, tokens, answer_start, pad_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def step_peak_bytes(step, repeats: int = 3) -> float:
    """Median peak RSS above the resting RSS over a few steps."""
    peaks = []
    for _ in range(repeats):
        gc.collect()
        resting = status_bytes("VmRSS")
        reset_peak()
        step()
        peaks.append(status_bytes("VmHWM") - resting)
    return statistics.median(peaks)


def peak_in_fresh_process(args, name: str) -> float:
    command = [sys.executable, __file__, "--measure-memory", name, "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--tokenizer", str(args.tokenizer), "--precision", args.precision]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--tokenizer", type=Path, default=CONFIGS.parent / "data/demo/tokenizer.json",
                        help="the vocabulary the model is sized for (`make data` writes the demo's)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_native_bf16() else "fp32",
                        help="bf16 autocast (as bf16-mixed) or fp32; default bf16 where the CPU runs it natively")
    parser.add_argument("--measure-memory", metavar="SETTING", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vocab_size = CaptionTokenizer.from_file(args.tokenizer).vocab_size
    # As configs/finetune_vqa.yaml: context 24, the conv stem, the demo's vocabulary.
    config = preset(args.preset, context_length=24, patch_embedding="conv_stem", vocab_size=vocab_size)
    images, tokens = random_batch(config, args.batch_size, torch.Generator().manual_seed(0))
    answer_start = torch.full((args.batch_size,), config.context_length // 2)
    peft, lora = overlay("finetune_vqa_peft.yaml"), overlay("finetune_vqa_lora.yaml")
    prefix = dict(peft=PrefixConfig(**peft["peft"]), freeze=peft["freeze"])
    adapters = dict(lora=LoraConfig(**lora["lora"]))
    settings = {
        "full fine-tuning": VQAModule(architecture=config),
        "eP-ALM prefix": VQAModule(architecture=config, **prefix),
        "LoRA": VQAModule(architecture=config, **adapters),
        "prefix + LoRA": VQAModule(architecture=config, **prefix, **adapters),
    }
    if args.measure_memory:  # one setting, in its own process: print its peak and stop
        step = step_function(settings[args.measure_memory].train(), args.precision == "bf16")
        step(images, tokens, answer_start)  # AdamW allocates its state at the first step
        print(json.dumps({"peak": step_peak_bytes(lambda: step(images, tokens, answer_start))}))
        return
    steps = {name: step_function(module.train(), args.precision == "bf16") for name, module in settings.items()}
    bound = {name: lambda step=step: step(images, tokens, answer_start) for name, step in steps.items()}
    median = median_step_seconds(bound, args.warmup, args.repeats)
    peaks = {name: peak_in_fresh_process(args, name) for name in settings}
    rows = []
    full = next(iter(settings))
    for name, module in settings.items():
        trainable, total = module.parameter_counts()
        kept = 3 * 4 * trainable  # fp32 gradient and AdamW's two moments per trainable number
        rows.append([name, f"{trainable:,}", f"{100 * trainable / total:.2f}%", f"{median[name] * 1e3:.0f}",
                     f"{median[name] / median[full]:.2f}", f"{peaks[name] / MIB:.0f}", f"{kept / MIB:.1f}"])
    table = markdown_table(["setting", "trainable", "trainable share", "ms / step", "step / full step",
                            "step peak above resting (MiB)", "gradients + AdamW state (MiB)"], rows)
    notes = (f"Preset `{args.preset}` (context 24, conv stem, vocabulary {vocab_size} as in the VQA configs), "
             f"{'bf16 autocast' if args.precision == 'bf16' else 'fp32'}, "
             f"batch {args.batch_size}, {args.warmup} warm-up and {args.repeats} timed steps per setting, medians; "
             "the PEFT settings are those of configs/finetune_vqa_peft.yaml and configs/finetune_vqa_lora.yaml.")
    publish("VQA training step: full fine-tuning, eP-ALM prefix, LoRA, both", f"{table}\n\n{notes}", args.results)


if __name__ == "__main__":
    main()
