"""Where each file of the demo world lives under the output root.

The names follow the real datasets (COCO 2014 captions/instances, VQAv2, MSR-VTT and
MSRVTT-QA), so a config written for the demo world works on the real data by changing the root.
"""

from pathlib import Path

MANIFEST = "manifest.json"


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
