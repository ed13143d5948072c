"""Which tube tokens tell which way a thing moves: linear probes on the demo clips' tubes, untrained.

    python bench/direction_probe.py          # after `make data`

For every "which way does the <colour> <shape> move?" question of the demo world (train and val),
the clip goes through one tube shape at its initialisation (no training, no ViT blocks), and a
linear classifier learns left / right / up / down from its tokens, one classifier per colour
named in the question (an object's contrast with the background decides the sign of what a
kernel sees). Two readouts:

- pooled: the tokens summed, as attention that does not look at positions would see them;
- per position: the tokens side by side, as a readout that knows where each token is.

A tube whose pooled tokens already tell the direction hands the blocks a one-token feature; one
that needs the per-position readout leaves them to compare where an object is early and late.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from mammut.data.demo.world import COLOURS
from mammut.data.transforms import clip_transform, normalize_clips
from mammut.data.video import read_clip
from mammut.model.tubes import SparseTubes, TubeShape
from report import RESULTS, markdown_table, publish

DIRECTIONS = ("left", "right", "up", "down")
SHAPES = {
    "wide, 4×16×16 (demo, random start)": TubeShape((4, 16, 16), (8, 16, 16), (2, 0, 0)),
    "long thin, 16×8×8 (random start)": TubeShape((16, 8, 8), (16, 16, 16), (0, 4, 4)),
    "motion, 16×8×8, pitch 12": TubeShape((16, 8, 8), (16, 12, 12), (0, 4, 4), init="motion"),
    "velocity, 8×16×16 taps over 15×31×31 (demo)": TubeShape((8, 16, 16), (16, 16, 16), dilation=(2, 2, 2),
                                                               init="velocity"),
    "velocity, 8×16×16 taps over the whole frame (demo)": TubeShape((8, 16, 16), (16, 16, 16), dilation=(2, 4, 4),
                                                                     init="velocity"),
}


def direction_questions(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips (N, 3, 16, 64, 64) normalised, the answer's index and the named colour's index."""
    questions = [q for q in json.loads((root / f"video/{split}_qa.json").read_text())
                 if q["question"].startswith("which way")]
    transform = clip_transform(64)
    clips = torch.stack([transform(read_clip(root / f"video/videos/video{q['video_id']}.mp4", 16))
                         for q in questions])
    answers = torch.tensor([DIRECTIONS.index(q["answer"]) for q in questions])
    colours = torch.tensor([list(COLOURS).index(q["question"].split()[4]) for q in questions])
    return normalize_clips(clips), answers, colours


def tube_tokens(shape: TubeShape, clips: torch.Tensor, width: int) -> torch.Tensor:
    torch.manual_seed(0)
    tubes = SparseTubes([shape], width=width, frames=16, image_size=64, patch_size=8)
    with torch.no_grad():
        return torch.cat([tubes(batch) - tubes.position_embedding for batch in clips.split(128)])


def probe(train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...], steps: int = 300,
          weight_decay: float = 1e-2) -> tuple[float, float]:
    """Train and val accuracy of one linear 4-way classifier per colour, full batch, Adam."""
    (x_train, y_train, c_train), (x_val, y_val, c_val) = train, val
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    weight = torch.zeros(len(COLOURS), x_train.shape[1], len(DIRECTIONS), requires_grad=True)
    bias = torch.zeros(len(COLOURS), len(DIRECTIONS), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)

    def logits(x, colours):
        return torch.einsum("nd,ndk->nk", x, weight[colours]) + bias[colours]

    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(logits(x_train, c_train), y_train) + weight_decay * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return tuple((logits(x, c).argmax(1) == y).float().mean().item()
                     for x, y, c in ((x_train, y_train, c_train), (x_val, y_val, c_val)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/demo"), help="the demo world (`make data`)")
    parser.add_argument("--width", type=int, default=192, help="channels per token (the demo model's vision_width)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the table is appended to")
    args = parser.parse_args()
    splits = {split: direction_questions(args.root, split) for split in ("train", "val")}
    rows = []
    for name, shape in SHAPES.items():
        tokens = {split: tube_tokens(shape, clips, args.width) for split, (clips, _, _) in splits.items()}
        for readout, features in (("pooled", lambda t: t.sum(1)), ("per position", lambda t: t.flatten(1))):
            train, val = probe(*[(features(tokens[split]), *splits[split][1:]) for split in ("train", "val")])
            rows.append([name, tokens["val"].shape[1], readout, f"{train:.1%}", f"{val:.1%}"])
    table = markdown_table(["tube (at its initialisation)", "tokens", "readout", "train", "val"], rows)
    counts = {split: len(answers) for split, (_, answers, _) in splits.items()}
    notes = (f"Direction questions of the demo world: {counts['train']} train, {counts['val']} val; chance 25%. "
             f"Tokens {args.width} wide, seed 0, the position embedding left out. One linear classifier per colour "
             "named in the question, 300 full-batch Adam steps, weight decay 1e-2.")
    publish("Which tube tokens tell the direction of motion: linear probes at initialisation", f"{table}\n\n{notes}",
            args.results)


if __name__ == "__main__":
    main()
