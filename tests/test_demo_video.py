"""The demo world's video clips: real mp4 files with MSR-VTT and MSRVTT-QA annotations whose
answers the pixels bear out, and which one frame cannot give."""

from __future__ import annotations

import numpy as np
import pytest

from mammut.data.demo import generate
from mammut.data.demo.clips import FRAMES
from mammut.data.demo.world import COLOURS
from mammut.data.video import read_clip
from mammut.data.video_records import read_msrvtt_captions, read_video_qa

SPLITS = {"train": "train", "val": "validate", "test": "test"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0, tiny=True, tasks=("captions", "video"), clip_sizes={"train": 40, "val": 8, "test": 8})
    return root


def test_clips_and_annotations_are_read_by_the_msrvtt_readers(world):
    for split, msrvtt_split in SPLITS.items():
        clips, skipped = read_msrvtt_captions(world / f"video/{split}_videodatainfo.json", world / "video/videos",
                                              msrvtt_split)
        questions, _ = read_video_qa(world / f"video/{split}_qa.json", world / "video/videos")
        assert skipped == 0 and len(clips) == {"train": 40, "val": 8, "test": 8}[split]
        assert all(len(set(clip.captions)) == 3 for clip in clips)
        assert {q.image_id for q in questions} == {clip.image_id for clip in clips}
        frames = read_clip(clips[0].path, count=FRAMES)
        assert frames.shape == (FRAMES, 64, 64, 3)


def test_the_same_seed_writes_the_same_clips(world, tmp_path):
    generate(tmp_path, seed=0, tiny=True, tasks=("captions", "video"), clip_sizes={"train": 40, "val": 8, "test": 8})
    for name in ("video/train_videodatainfo.json", "video/val_qa.json", "video/videos/video1000003.mp4"):
        assert (tmp_path / name).read_bytes() == (world / name).read_bytes(), name


def foreground(frame: np.ndarray) -> np.ndarray:
    """Pixels far from the frame's median colour: the objects, on a dark low-contrast background."""
    return np.abs(frame.astype(int) - np.median(frame, axis=(0, 1))).max(axis=-1) > 70


def test_answers_agree_with_the_pixels_and_change_over_time(world):
    """For every clip of one object: its centre moves the way the answer says, its area grows or
    shrinks as the answer says, or its colour becomes the answer's colour, and was another before."""
    questions, _ = read_video_qa(world / "video/train_qa.json", world / "video/videos")
    per_clip = {}
    for question in questions:
        per_clip.setdefault(question.image_id, []).append(question)
    checked = set()
    for asked in per_clip.values():
        if len(asked) != 1:
            continue
        question, answer = asked[0].question, asked[0].answers[0]
        frames = read_clip(asked[0].path, count=FRAMES).numpy()
        first, last = foreground(frames[0]), foreground(frames[-1])
        if question.startswith("which way"):
            (y0, x0), (y1, x1) = (np.argwhere(mask).mean(axis=0) for mask in (first, last))
            moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}[answer]
            assert moved > 10, (question, answer, moved)
        elif question.startswith("does the"):
            ratio = last.sum() / first.sum()
            assert (ratio > 2 if answer == "grow" else ratio < 0.5), (question, answer, ratio)
        else:
            colours = [frames[i][mask].mean(axis=0) for i, mask in ((0, first), (-1, last))]
            nearest = [min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - colour).sum())
                       for colour in colours]
            assert nearest[1] == answer and nearest[0] != answer, (question, answer, nearest)
        checked.add(question.split()[0])
    assert checked == {"which", "does", "what"}  # every kind of question was checked
