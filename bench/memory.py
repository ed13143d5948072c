"""Peak memory of a training step, with and without activation checkpointing.

    python bench/memory.py                                  # small preset, batch 32, fp32 and bf16
    python bench/memory.py --preset tiny --batch-size 64 --steps 2
    python bench/memory.py --caption-loss                   # the caption loss alone: full vs chunked logits

Each setting (activation checkpointing off / on, per precision) runs in a fresh Python process,
so no setting inherits another's allocations. A step is forward, both losses (ContrastiveLoss +
caption_loss), backward and an AdamW step on one fixed random batch; bf16 is mixed precision
(fp32 weights under torch.autocast), as with ``--trainer.precision=bf16-mixed``.

Memory is the process's resident set size (RSS) read from /proc/self/status, since torch keeps
no allocator statistics on the CPU: before each step the peak (VmHWM) is reset to the current
RSS through /proc/self/clear_refs, and after the step the peak is read. "Resting" is the RSS
before the step (weights, gradients, AdamW states, the batch); "activations" is the peak above
it. Large buffers are returned to the system on free (MALLOC_MMAP_THRESHOLD_), so that the
resting RSS of a step does not include the previous step's freed activations. The first step
(AdamW allocates its states) is not counted; the table gives the median of the others. Linux only.
Speed is bench/train_throughput.py's job: recomputation costs about one more forward pass.

``--caption-loss`` measures the captioning loss alone at the CLIP vocabulary (49,408 words, the
openMaMMUT preset's), batch 128 and context 77 (76 target positions, a random quarter or so of
them padding, as ``report.random_batch`` pads): the loss and its backward from the decoder's final
hidden states (width 768) through the vocabulary projection, built as whole (B, T, V) logits
(``caption_loss``) or chunk by chunk (``chunked_caption_loss``), with peak memory as above and
the median time of a loss forward and backward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mammut.model import ContrastiveLoss, Mammut, caption_loss, chunked_caption_loss, preset
from report import RESULTS, markdown_table, publish, random_batch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
MIB = 2 ** 20


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def measure(args: argparse.Namespace) -> dict:
    """One setting, in this process: the resting and peak RSS of a step."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    config = preset(args.preset)
    model = Mammut(config)
    model.set_grad_checkpointing(args.checkpointing)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    contrastive = ContrastiveLoss()
    images, tokens = random_batch(config, args.batch_size, torch.Generator().manual_seed(args.seed))
    dtype = PRECISIONS[args.precision]
    steps = []
    for _ in range(args.steps + 1):
        resting = status_bytes("VmRSS")
        reset_peak()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(images, tokens)
            loss = (contrastive(out.image_embedding, out.text_embedding, out.logit_scale)
                    + caption_loss(out.caption_logits, tokens[:, 1:], config.pad_id))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del out, loss
        steps.append({"resting": resting, "peak": status_bytes("VmHWM")})
    return {key: statistics.median(step[key] for step in steps[1:]) for key in ("resting", "peak")}


def measure_caption_loss(args: argparse.Namespace) -> dict:
    """One caption-loss setting, in this process: resting and peak RSS, and seconds per forward + backward."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    config = preset("openmammut_l14")
    generator = torch.Generator().manual_seed(args.seed)
    _, tokens = random_batch(config, args.batch_size, generator)
    targets = tokens[:, 1:]
    head = torch.nn.Linear(config.text_width, config.vocab_size, bias=False)
    hidden = torch.randn(args.batch_size, targets.shape[1], config.text_width, generator=generator, requires_grad=True)
    dtype = PRECISIONS[args.precision]
    steps = []
    for _ in range(args.steps + 1):
        resting = status_bytes("VmRSS")
        reset_peak()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            if args.chunk_tokens:
                loss = chunked_caption_loss(hidden, head, targets, config.pad_id, chunk_tokens=args.chunk_tokens)
            else:
                loss = caption_loss(head(hidden), targets, config.pad_id)
        loss.backward()
        seconds = time.perf_counter() - start
        hidden.grad, head.weight.grad = None, None
        del loss
        steps.append({"resting": resting, "peak": status_bytes("VmHWM"), "seconds": seconds})
    return {key: statistics.median(step[key] for step in steps[1:]) for key in ("resting", "peak", "seconds")}


def caption_loss_table(args: argparse.Namespace) -> None:
    """Full against chunked logits, per precision, each in a fresh process."""
    rows, failures = [], []
    for precision in args.precisions:
        full = in_fresh_process(args, precision, checkpointing=False, chunk_tokens=0)
        for chunk, result in ((0, full), (args.chunk_tokens, in_fresh_process(args, precision, False, args.chunk_tokens))):
            setting = [precision, "full (B, T, V) logits" if not chunk else f"chunked, {chunk} tokens a chunk"]
            if "error" in result or "error" in full:
                rows.append(setting + ["failed"] + [""] * 5)
                failures.append(f"{precision}, {setting[1]}: {result.get('error', full.get('error'))}")
                continue
            activations = result["peak"] - result["resting"]
            rows.append(setting + [
                f"{result['peak'] / MIB:.0f}", f"{activations / MIB:.0f}",
                f"{(full['peak'] - full['resting']) / activations:.1f}×", f"{result['seconds']:.2f}",
                f"{result['seconds'] / full['seconds']:.2f}×"])
    table = markdown_table(["precision", "caption loss", "peak RSS (MiB)", "loss memory: peak - resting (MiB)",
                            "full / this memory", "forward + backward (s)", "× full time"], rows)
    notes = (f"Vocabulary 49,408, batch {args.batch_size}, context 77 (76 targets), hidden width 768; loss and "
             f"backward from the final hidden states through the vocabulary projection; {args.threads} threads; each "
             f"setting in a fresh process, median of {args.steps} after one more. The chunked loss skips padding "
             "targets before projecting, and takes each chunk's gradients while its logits exist "
             "(`mammut.model.chunked_caption_loss`).")
    failed = "".join(f"\n\nFailed: {failure}" for failure in failures)
    publish("Caption-loss memory: full logits against chunked", f"{notes}\n\n{table}{failed}", args.results)


def in_fresh_process(args: argparse.Namespace, precision: str, checkpointing: bool, chunk_tokens: int | None = None) -> dict:
    """The measurements of one setting, or ``{"error": ...}`` with the last line of its error."""
    command = [sys.executable, __file__, "--measure", "--preset", args.preset, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed),
               "--precision", precision] + (["--checkpointing"] if checkpointing else [])
    if chunk_tokens is not None:  # a caption-loss setting (0: the full logits)
        command += ["--caption-loss", "--chunk-tokens", str(chunk_tokens)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        return {"error": errors[-1] if errors else f"exit status {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per setting, after one more")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the table is appended to")
    # A single setting, run by main() in a fresh process.
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--caption-loss", action="store_true",
                        help="measure the caption loss alone at the CLIP vocabulary (batch 128 unless --batch-size)")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="of the chunked caption loss")
    args = parser.parse_args()
    if args.caption_loss and "--batch-size" not in sys.argv:
        args.batch_size = 128
    if args.measure:
        print(json.dumps(measure_caption_loss(args) if args.caption_loss else measure(args)))
        return
    if args.caption_loss:
        caption_loss_table(args)
        return

    rows, failures = [], []
    for precision in args.precisions:
        plain = in_fresh_process(args, precision, checkpointing=False)
        for checkpointing, result in ((False, plain), (True, in_fresh_process(args, precision, checkpointing=True))):
            setting = [precision, "on" if checkpointing else "off"]
            if "error" in result or "error" in plain:
                rows.append(setting + ["failed"] + [""] * 4)
                failures.append(f"{precision}, checkpointing {setting[1]}: {result.get('error', plain.get('error'))}")
                continue
            activations = result["peak"] - result["resting"]
            rows.append(setting + [
                f"{result['resting'] / MIB:.0f}", f"{result['peak'] / MIB:.0f}", f"{activations / MIB:.0f}",
                f"{activations / (plain['peak'] - plain['resting']):.2f}×", f"{result['peak'] / plain['peak']:.2f}×",
            ])
    table = markdown_table(
        ["precision", "activation checkpointing", "resting RSS (MiB)", "peak RSS in a step (MiB)",
         "activations: peak - resting (MiB)", "activations vs off", "peak vs off"], rows)
    parameters = sum(p.numel() for p in Mammut(preset(args.preset)).parameters())
    notes = (f"Preset `{args.preset}` ({parameters / 1e6:.1f}M parameters), batch {args.batch_size}, "
             f"{args.threads} threads; each setting in a fresh process, median of {args.steps} steps after one "
             "more. Memory is the process RSS (/proc/self/status), peak reset before each step.")
    failed = "".join(f"\n\nFailed: {failure}" for failure in failures)
    publish("Training-step memory, activation checkpointing off and on", f"{notes}\n\n{table}{failed}", args.results)


if __name__ == "__main__":
    main()
