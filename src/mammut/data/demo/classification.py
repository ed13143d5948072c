"""The demo world's zero-shot classification split: single objects labelled by colour and shape.

42 classes ("red circle", ..., "white cross"), each drawn as one object of either size at a random
place, so that top-5 accuracy means something (6 shape classes would leave chance at 5/6). The
files are an ImageFolder tree, as ImageNet's validation set is usually laid out:

    classification/{val,test}/<colour>_<shape>/<index>.jpg
    classification/classnames.txt                          line i names the i-th folder in sorted order
    classification/zeroshot_classification_templates.txt  the prompts, {c} standing for the class name
    classification/info.json                               generator version, seed, image size, sizes

The images come from their own random streams (seed, split, "classification"), so writing them
leaves every other file of the demo world as it was:

    python -m mammut.data.demo.classification --out data/demo   # a demo world written before this split
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..json_records import write_json
from .layout import add_world_arguments, world_settings
from .render import render
from .scene import single_object_scene
from .split import split_rng
from .world import COLOURS, SHAPES, SIZES
from .writer import GENERATOR_VERSION, write_jpeg

SPLITS = ("val", "test")
IMAGES_PER_CLASS = 20
TINY_IMAGES_PER_CLASS = 2
# Phrasings of single objects that the training captions use ("a single red circle", "one red
# circle on the left"), the positions averaged out; none needs an article ("a orange ...").
TEMPLATES = ("a single {c}", "one {c}", "one {c} on the left", "one {c} on the right", "one {c} at the top",
             "one {c} at the bottom", "one {c} in the center")
CLASSES = sorted((colour, shape) for colour in COLOURS for shape in SHAPES)  # sorted as their folders are


def class_folder(colour: str, shape: str) -> str:
    return f"{colour}_{shape}"


def classification_dir(root: Path) -> Path:
    return Path(root) / "classification"


def write_classification(root: Path, seed: int, image_size: int, images_per_class: int = IMAGES_PER_CLASS) -> dict:
    """Write the split's images, class names, templates and info under ``root``; return the info."""
    folder = classification_dir(root)
    for split_index, split in enumerate(SPLITS):
        rng = split_rng(seed, split, "classification")
        written = set()
        for label, (colour, shape) in enumerate(CLASSES):
            class_dir = folder / split / class_folder(colour, shape)
            class_dir.mkdir(parents=True, exist_ok=True)
            for k in range(images_per_class):
                index = label * images_per_class + k
                scene = single_object_scene(rng, shape, colour, rng.choice(SIZES), image_size)
                # The entropy's last field tells these from the images (3 fields) and clips (last 1).
                path = class_dir / f"{index:06d}.jpg"
                write_jpeg(path, render(scene, np.random.default_rng((seed, split_index, index, 2))))
                written.add(path)
        for stale in (folder / split).glob("*/*.jpg"):  # left by an earlier, larger run
            if stale not in written:
                stale.unlink()
    (folder / "classnames.txt").write_text("".join(f"{colour} {shape}\n" for colour, shape in CLASSES))
    (folder / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in TEMPLATES))
    info = {"generator": "mammut.data.demo.classification", "generator_version": GENERATOR_VERSION, "seed": seed,
            "image_size": image_size, "classes": len(CLASSES), "images_per_class": images_per_class}
    write_json(folder / "info.json", info)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.data.demo.classification",
                                     description="Write the demo world's zero-shot classification split.")
    add_world_arguments(parser)
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_IMAGES_PER_CLASS} images per class and split")
    args = parser.parse_args(argv)
    seed, image_size = world_settings(args)
    info = write_classification(Path(args.out), seed, image_size,
                                TINY_IMAGES_PER_CLASS if args.tiny else IMAGES_PER_CLASS)
    print(f"classification split in {classification_dir(Path(args.out))}: {info['classes']} classes, "
          f"{info['images_per_class']} images per class in each of {', '.join(SPLITS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
