"""What every benchmark here shares: the peer model, the step-timing set-up, the machine
description, and the results file."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from mammut.machine import cpu_model

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def build_coca(config):
    """open_clip's CoCa at the size of a MaMMUT config, from random init.

    MaMMUT's decoder layers map onto CoCa's text towers: the layers without cross-attention
    become CoCa's unimodal text layers, those with it CoCa's multimodal layers.
    """
    from open_clip.coca_model import CoCa  # the bench extra; only the CoCa comparisons need it

    multimodal_layers = len(config.cross_attention_layer_set)
    text = dict(context_length=config.context_length, vocab_size=config.vocab_size,
                width=config.text_width, heads=config.text_heads, mlp_ratio=config.mlp_ratio)
    model = CoCa(
        embed_dim=config.embed_dim,
        vision_cfg=dict(image_size=config.image_size, patch_size=config.patch_size, width=config.vision_width,
                        layers=config.vision_depth, head_width=config.vision_width // config.vision_heads,
                        mlp_ratio=config.mlp_ratio, output_tokens=True),
        text_cfg=dict(text, layers=config.text_depth - multimodal_layers, embed_cls=True, output_tokens=True,
                      pad_id=config.pad_id, eos_id=config.eos_id),
        multimodal_cfg=dict(text, layers=multimodal_layers),
        pad_id=config.pad_id,
    )
    # open_clip leaves this projection as torch.empty when no weights are loaded
    # (MultimodalTransformer.init_parameters is never called); initialise it as intended.
    torch.nn.init.normal_(model.text_decoder.text_projection, std=config.text_width ** -0.5)
    return model


def random_batch(config, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) and captions (B, T): bos, random words, eos, then padding."""
    images = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    T = config.context_length
    tokens = torch.randint(3, config.vocab_size, (batch_size, T), generator=generator)
    lengths = torch.randint(T // 2, T + 1, (batch_size,), generator=generator)
    positions = torch.arange(T)
    tokens[:, 0] = config.bos_id
    tokens[positions[None] == lengths[:, None] - 1] = config.eos_id
    tokens[positions[None] >= lengths[:, None]] = config.pad_id
    return images, tokens


def step_parser(description: str) -> argparse.ArgumentParser:
    """Arguments of a benchmark that times training steps of several settings side by side."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the tables are appended to")
    return parser


def median_step_seconds(steps: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each step. After the warm-up calls, timing rounds visit every
    setting in turn, in reverse order every other round, so load changes on a shared machine
    hit all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps.items())
    for round_index in range(repeats):
        for name, step in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(title: str, body: str, results: Path = RESULTS) -> None:
    """Print the tables and append them, with date, machine and command, to the results file."""
    command = shlex.join(["python", *sys.argv])
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    section = f"## {title}\n\n{stamp}; {machine()}\n\n`{command}`\n\n{body}\n"
    print(section)
    new = not results.exists()
    with results.open("a") as f:
        if new:
            f.write("# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n\n")
        f.write(section + "\n")
