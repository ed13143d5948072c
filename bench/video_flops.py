"""Encoder FLOPs of a clip: sparse tubes through the ViT once, against one image and frame by frame.

    python bench/video_flops.py

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies, convolutions and
attention, forward only, batch of one) on the encoder alone (``Mammut.encode_image``):

- one image: the image path (patch embedding or conv stem, then the blocks);
- one clip of T frames through the tubes of ``configs/model/demo_video.yaml`` (MaMMUT Sec. 3.4);
- the same clip frame by frame: T images, each through the whole encoder, the cost that
  sparse tubes avoid.

The ViT-B/16 rows use the same recipe at 224 pixels and 16 frames with tubes after TubeViT's
(arXiv 2212.03229, Sec. 3.1): an 8x8x8 cube, a 16x4x4 thin tube, a 4x12x12 wide one and a
single-frame patch, on sparse strides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from mammut.model import Mammut, MammutConfig, preset
from report import RESULTS, markdown_table, publish

VIT_B_TUBES = [
    {"kernel": [1, 16, 16], "stride": [16, 16, 16], "offset": [7, 0, 0]},
    {"kernel": [8, 8, 8], "stride": [16, 32, 32], "offset": [4, 0, 0]},
    {"kernel": [16, 4, 4], "stride": [16, 32, 32], "offset": [0, 8, 8]},
    {"kernel": [4, 12, 12], "stride": [16, 32, 32], "offset": [6, 16, 16]},
]


def encoder_flops(model: Mammut, inputs: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.encode_image(inputs)
    return counter.get_total_flops()


def rows_for(name: str, config: MammutConfig) -> list[list]:
    model = Mammut(config).eval()
    size, frames = config.image_size, config.video_frames
    image = encoder_flops(model, torch.randn(1, 3, size, size))
    clip = encoder_flops(model, torch.randn(1, 3, frames, size, size))
    frame_by_frame = frames * image
    tokens = 1 + model.vision.tubes.num_tokens
    patches = (size // config.patch_size) ** 2 + 1
    return [
        [name, "one image", patches, f"{image / 1e9:.3f}", "1.00"],
        [name, f"{frames}-frame clip, sparse tubes", tokens, f"{clip / 1e9:.3f}", f"{clip / image:.2f}"],
        [name, f"{frames}-frame clip, frame by frame", frames * patches, f"{frame_by_frame / 1e9:.3f}",
         f"{frame_by_frame / image:.2f}"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the table is appended to")
    parser.add_argument("--skip-vit-b", action="store_true", help="only the demo model")
    args = parser.parse_args()
    demo = MammutConfig(**yaml.safe_load(open("configs/model/demo_video.yaml")))
    rows = rows_for("demo (configs/model/demo_video.yaml)", demo)
    if not args.skip_vit_b:
        rows += rows_for("ViT-B/16 preset `base`, 224 px", preset("base", video_frames=16, tube_shapes=VIT_B_TUBES))
    table = markdown_table(["encoder", "input", "tokens", "GFLOPs", "× one image"], rows)
    notes = ("Forward FLOPs of the encoder for one input, counted by `torch.utils.flop_counter.FlopCounterMode` "
             "(a multiply-add counts 2). The tube tokens, the class token included, go through the ViT blocks "
             "once; frame by frame runs the whole encoder on every frame.")
    publish("Video encoding cost: sparse tubes against one image and frame by frame", f"{table}\n\n{notes}",
            args.results)


if __name__ == "__main__":
    main()
