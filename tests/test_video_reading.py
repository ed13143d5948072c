"""Reading clips from real mp4 files with decord and PyAV: which frames, the same pixels from
both, odd sizes and variable frame rates, and a clear error for files that are not videos."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mammut.data.video import VideoDecodeError, count_frames, frame_indices, read_clip, read_frames, resolve_backend
from mammut.data.video_writer import write_video

HAS_DECORD = importlib.util.find_spec("decord") is not None
BACKENDS = [pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed here")),
            "pyav"]


def numbered_frames(count: int, height: int = 32, width: int = 40) -> np.ndarray:
    """Frame i is a flat colour whose red level is 12 * i: its index can be read back from any pixel."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[..., 0] = (12 * np.arange(count, dtype=np.uint8))[:, None, None]
    frames[..., 2] = 90
    return frames


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [round(float(frame[..., 0].mean()) / 12) for frame in frames]


# Which frames

def test_uniform_sampling_takes_the_middle_of_equal_segments():
    assert frame_indices(32, 8, "uniform") == [2, 6, 10, 14, 18, 22, 26, 30]
    assert frame_indices(16, 16, "uniform") == list(range(16))
    assert frame_indices(100, 3, "uniform") == [16, 50, 83]  # segments [0, 33.3), [33.3, 66.7), [66.7, 100)


def test_random_sampling_takes_one_frame_in_each_segment_and_varies_with_the_generator():
    draws = [frame_indices(64, 8, "random", generator=torch.Generator().manual_seed(seed)) for seed in range(20)]
    for indices in draws:
        assert [index // 8 for index in indices] == list(range(8))  # one per segment of 8 frames, in order
    assert len({tuple(indices) for indices in draws}) > 15
    assert frame_indices(64, 8, "random", generator=torch.Generator().manual_seed(3)) == draws[3]


def test_a_clip_shorter_than_the_frames_asked_for_loops_or_holds_its_last_frame():
    assert frame_indices(5, 8, short_clips="loop") == [0, 1, 2, 3, 4, 0, 1, 2]
    assert frame_indices(5, 8, short_clips="pad") == [0, 1, 2, 3, 4, 4, 4, 4]
    with pytest.raises(ValueError, match="short_clips"):
        frame_indices(5, 8, short_clips="stretch")


# Decoding real files

@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_returns_the_frames_at_the_indices_asked_for(tmp_path, backend):
    path = write_video(tmp_path / "numbered.mp4", numbered_frames(20))
    assert count_frames(path) == 20
    frames = read_frames(path, [0, 7, 19, 7, 3], backend)
    assert frames.shape == (5, 32, 40, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames) == [0, 7, 19, 7, 3]
    clip = read_clip(path, count=4, sampling="uniform", backend=backend)
    assert isinstance(clip, torch.Tensor) and frame_numbers(clip.numpy()) == [2, 7, 12, 17]


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed here")
@pytest.mark.parametrize("size,pixel_format", [((32, 40), "yuv420p"), ((29, 37), "yuv444p"), ((32, 48), "yuv420p")],
                         ids=["even", "odd", "48-wide"])
def test_both_backends_return_the_same_pixels(tmp_path, size, pixel_format):
    """decord fails on a frame 48 pixels wide; the file is then read with PyAV, with the same result."""
    frames = np.random.default_rng(0).integers(0, 256, (12, *size, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noise.mp4", frames, pixel_format=pixel_format)
    indices = [0, 5, 11, 2]
    decord_frames, pyav_frames = (read_frames(path, indices, backend) for backend in ("decord", "pyav"))
    assert decord_frames.shape == (4, *size, 3)
    assert np.array_equal(decord_frames, pyav_frames)


def test_frames_are_counted_and_indexed_by_position_at_a_variable_frame_rate(tmp_path):
    times = [0.0, 0.05, 0.3, 0.31, 0.9, 1.0, 1.7, 1.72, 2.5, 2.6]
    path = write_video(tmp_path / "vfr.mp4", numbered_frames(10), frame_times=times)
    assert count_frames(path) == 10
    for backend in ("decord", "pyav") if HAS_DECORD else ("pyav",):
        assert frame_numbers(read_frames(path, list(range(10)), backend)) == list(range(10))


def test_auto_backend_is_decord_where_installed_and_pyav_elsewhere():
    assert resolve_backend("auto") == ("decord" if HAS_DECORD else "pyav")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("opencv")


# Files that are not readable videos

def bad_files(tmp_path) -> list[str]:
    good = write_video(tmp_path / "good.mp4", numbered_frames(16)).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])  # its index, at the end, is lost
    # Its index, at the start, lists frames that are not there.
    streamable = write_video(tmp_path / "streamable.mp4", numbered_frames(16), faststart=True).read_bytes()
    (tmp_path / "truncated_streamable.mp4").write_bytes(streamable[: len(streamable) * 6 // 10])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "not_a_video.mp4").write_bytes(b"hello, world\n" * 20)
    Image.new("RGB", (16, 16), "red").save(tmp_path / "an_image.jpg")
    return ["truncated.mp4", "truncated_streamable.mp4", "empty.mp4", "not_a_video.mp4", "an_image.jpg"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_file_is_named_in_a_clear_error(tmp_path, backend):
    for name in bad_files(tmp_path):
        with pytest.raises(VideoDecodeError, match=rf"{name}: cannot read this video"):
            read_clip(tmp_path / name, count=16, backend=backend)
    with pytest.raises(VideoDecodeError, match="missing.mp4: cannot read this video: no such file"):
        read_clip(tmp_path / "missing.mp4", count=4, backend=backend)
