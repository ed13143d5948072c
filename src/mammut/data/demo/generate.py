"""Generating the demo world: scenes per split, images in parallel, JSON per task.

Scenes and captions are drawn in this process, in order, from one random stream
per split (uniqueness checks need the whole split). Images are then rendered by
worker processes, each from its own seed (seed, split, index), so the files are
identical whatever the number of workers.
"""

import multiprocessing
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..json_records import write_json
from ..video_writer import write_video
from .clips import CLIP_FPS, ClipRecord, build_clip_split, msrvtt_document, render_clip, video_qa_document
from .formats import captions_document, instances_document, vqa_documents
from .layout import (
    MANIFEST,
    captions_path,
    image_dir,
    instances_path,
    msrvtt_path,
    task_paths,
    video_dir,
    video_qa_path,
    vqa_annotations_path,
    vqa_questions_path,
)
from .render import render
from .scene import Scene
from .split import MAX_SPLIT_SIZE, ImageRecord, build_split
from .writer import GENERATOR_VERSION, info, write_jpeg
from .world import SPLITS

TASKS = ("captions", "vqa", "detection", "video")
DEFAULT_SIZES = {"train": 20_000, "val": 1_000, "test": 1_000}
TINY_SIZES = {"train": 48, "val": 24, "test": 24}
# Clips per split: a clip is 16 frames, and video batches are smaller than image batches.
DEFAULT_CLIP_SIZES = {"train": 4_000, "val": 400, "test": 400}
TINY_CLIP_SIZES = {"train": 16, "val": 8, "test": 8}
MIN_IMAGE_SIZE = 32  # below this, small shapes shrink under 5 px

# Starting workers costs more than drawing a hundred or two images.
PARALLEL_MIN_IMAGES = 200
RENDER_CHUNK = 256

_IMAGE_NAME = re.compile(r"\d{12}\.jpg")


def _render_to_file(job: tuple[str, Scene, tuple[int, int, int]]) -> None:
    path, scene, entropy = job
    write_jpeg(Path(path), render(scene, np.random.default_rng(entropy)))


def _render_clip_to_file(job: tuple[str, object, tuple[int, int, int]]) -> None:
    path, clip, entropy = job
    write_video(Path(path), render_clip(clip, entropy), fps=CLIP_FPS)


def _clip_jobs(root: Path, split: str, seed: int, records: list[ClipRecord]) -> list[tuple]:
    """One job per clip, seeded by (seed, split, index, 1)."""
    # The entropy's last field tells clips from the images of the same index.
    split_index = SPLITS.index(split)
    return [(str(video_dir(root) / f"{r.name}.mp4"), r.clip, (seed, split_index, r.index, 1)) for r in records]


def _write_clip_files(root: Path, split: str, seed: int, image_size: int, records: list[ClipRecord]) -> None:
    description = "mammut demo world: video clips and captions (MSR-VTT schema)"
    write_json(msrvtt_path(root, split), msrvtt_document(records, split, info(split, seed, image_size, description)))
    write_json(video_qa_path(root, split), video_qa_document(records, split))


def _render_jobs(root: Path, split: str, seed: int, records: list[ImageRecord]) -> list[tuple]:
    folder = image_dir(root, split)
    split_index = SPLITS.index(split)
    return [(str(folder / r.file_name), r.scene, (seed, split_index, r.index)) for r in records]


def _remove_stale_images(root: Path, split: str, records: list[ImageRecord]) -> None:
    """Delete images a previous, larger run left behind, so the folder matches the JSON."""
    folder = image_dir(root, split)
    if not folder.is_dir():
        return
    current = {r.file_name for r in records}
    for path in folder.iterdir():
        if _IMAGE_NAME.fullmatch(path.name) and path.name not in current:
            path.unlink()


def _remove_stale_clips(root: Path, current: set[str]) -> None:
    """Delete clips a previous, larger run (or one with video) left behind."""
    folder = video_dir(root)
    if folder.is_dir():
        for path in folder.glob("video*.mp4"):
            if path.name not in current:
                path.unlink()


def _resolve_sizes(sizes: Mapping[str, int] | None, tiny: bool, defaults: tuple[dict, dict] = (DEFAULT_SIZES, TINY_SIZES),
                   ) -> dict[str, int]:
    resolved = dict(defaults[1] if tiny else defaults[0])
    unknown = set(sizes or {}) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)} in sizes; expected {SPLITS}")
    resolved.update(sizes or {})
    for split, size in resolved.items():
        if not 0 <= size <= MAX_SPLIT_SIZE:
            raise ValueError(f"split {split!r}: size {size} must be between 0 and {MAX_SPLIT_SIZE}")
    return resolved


def _resolve_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    chosen = set(tasks) | {"captions"}  # captions always: every other task reuses its images
    unknown = chosen - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; expected some of {TASKS}")
    return tuple(t for t in TASKS if t in chosen)


def _write_task_files(
    root: Path, split: str, seed: int, image_size: int, records: list[ImageRecord], tasks: tuple[str, ...]
) -> None:
    write_json(captions_path(root, split), captions_document(records, split, seed, image_size))
    if "vqa" in tasks:
        questions, annotations = vqa_documents(records, split, seed, image_size)
        write_json(vqa_questions_path(root, split), questions)
        write_json(vqa_annotations_path(root, split), annotations)
    if "detection" in tasks:
        write_json(instances_path(root, split), instances_document(records, split, seed, image_size))
    # Files of unselected tasks from an earlier run would disagree with these images.
    for task in TASKS:
        if task not in tasks:
            for path in task_paths(root, split, task):
                path.unlink(missing_ok=True)


def generate(
    out_dir: str | Path,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    image_size: int = 64,
    tasks: Iterable[str] = TASKS,
    tiny: bool = False,
    workers: int = 2,
    clip_sizes: Mapping[str, int] | None = None,
) -> dict:
    """Write the demo world under `out_dir` and return its manifest.

    `sizes` maps split name to image count and overrides the defaults (or the tiny
    sizes when `tiny`); `tasks` picks among "captions", "vqa", "detection"
    (captions are always written). `clip_sizes` does for video clips what `sizes` does for
    images. The same arguments give byte-identical files.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    root = Path(out_dir)
    split_sizes = _resolve_sizes(sizes, tiny)
    chosen_tasks = _resolve_tasks(tasks)
    clip_counts = _resolve_sizes(clip_sizes, tiny, (DEFAULT_CLIP_SIZES, TINY_CLIP_SIZES)) \
        if "video" in chosen_tasks else dict.fromkeys(SPLITS, 0)
    (root / MANIFEST).unlink(missing_ok=True)  # present again only once this run completes
    total = sum(split_sizes.values()) + sum(clip_counts.values())
    parallel = workers > 1 and total >= PARALLEL_MIN_IMAGES

    pool = multiprocessing.get_context().Pool(workers) if parallel else None
    try:
        pending, clip_files = [], set()
        for split in SPLITS:
            records = build_split(split, split_sizes[split], seed, image_size)
            image_dir(root, split).mkdir(parents=True, exist_ok=True)
            _remove_stale_images(root, split, records)
            jobs = _render_jobs(root, split, seed, records)
            if pool is None:
                for job in jobs:
                    _render_to_file(job)
            else:
                # Workers draw this split's images while this process writes its JSON.
                pending.append(pool.map_async(_render_to_file, jobs, chunksize=RENDER_CHUNK))
            _write_task_files(root, split, seed, image_size, records, chosen_tasks)
            if "video" in chosen_tasks:
                clips = build_clip_split(split, clip_counts[split], seed, image_size)
                video_dir(root).mkdir(parents=True, exist_ok=True)
                jobs = _clip_jobs(root, split, seed, clips)
                clip_files.update(Path(job[0]).name for job in jobs)
                if pool is None:
                    for job in jobs:
                        _render_clip_to_file(job)
                else:
                    pending.append(pool.map_async(_render_clip_to_file, jobs, chunksize=RENDER_CHUNK // 8))
                _write_clip_files(root, split, seed, image_size, clips)
        _remove_stale_clips(root, clip_files)
        for result in pending:
            result.get()  # re-raises any worker error here
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    if pool is not None:
        pool.close()
        pool.join()

    # Imported here, so that `python -m mammut.data.demo.classification` does not import its module twice.
    from .classification import IMAGES_PER_CLASS, TINY_IMAGES_PER_CLASS, write_classification

    # Not in the manifest, whose bytes a demo world written before this split keeps (it has its own info.json).
    write_classification(root, seed, image_size, TINY_IMAGES_PER_CLASS if tiny else IMAGES_PER_CLASS)
    manifest = {
        "generator": "mammut.data.demo",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "sizes": split_sizes,
        "clip_sizes": clip_counts,
        "tasks": list(chosen_tasks),
    }
    write_json(root / MANIFEST, manifest)
    return manifest
