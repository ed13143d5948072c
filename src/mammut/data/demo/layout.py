"""Where each file of the demo world lives under the output root.

The names follow the real datasets (COCO 2014 captions/instances, VQAv2, MSR-VTT and
MSRVTT-QA), so a config written for the demo world works on the real data by changing the root.
"""

import argparse
import json
from pathlib import Path

MANIFEST = "manifest.json"


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --seed and --image-size of a command that adds files to a written demo world."""
    parser.add_argument("--out", default="data/demo", help="the demo world's root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="default: the seed in <out>/manifest.json, else 0")
    parser.add_argument("--image-size", type=int, default=None,
                        help="default: the image size in <out>/manifest.json, else 64")


def world_settings(args: argparse.Namespace) -> tuple[int, int]:
    """The seed and image size given, else those the demo world at ``args.out`` was written with."""
    manifest = Path(args.out) / MANIFEST
    written = json.loads(manifest.read_text()) if manifest.is_file() else {}
    seed = args.seed if args.seed is not None else written.get("seed", 0)
    return seed, args.image_size if args.image_size is not None else written.get("image_size", 64)


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / "images" / split


def captions_path(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"captions_{split}.json"


def instances_path(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def vqa_questions_path(root: Path, split: str) -> Path:
    return Path(root) / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json"


def vqa_annotations_path(root: Path, split: str) -> Path:
    return Path(root) / "vqa" / f"v2_mscoco_{split}_annotations.json"


def video_dir(root: Path) -> Path:
    return Path(root) / "video" / "videos"


def msrvtt_path(root: Path, split: str) -> Path:
    return Path(root) / "video" / f"{split}_videodatainfo.json"


def video_qa_path(root: Path, split: str) -> Path:
    return Path(root) / "video" / f"{split}_qa.json"


def task_paths(root: Path, split: str, task: str) -> tuple[Path, ...]:
    """The JSON files one task writes for one split."""
    if task == "captions":
        return (captions_path(root, split),)
    if task == "vqa":
        return vqa_questions_path(root, split), vqa_annotations_path(root, split)
    if task == "detection":
        return (instances_path(root, split),)
    if task == "video":
        return msrvtt_path(root, split), video_qa_path(root, split)
    raise ValueError(f"unknown task {task!r}")
