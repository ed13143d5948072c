"""Reading clips: ``count`` frames of a video file, chosen by index, decoded into uint8.

    frames = read_clip("video7.mp4", count=16, sampling="uniform")   # (16, H, W, 3) uint8

Which frames (``frame_indices``):

- ``uniform`` (evaluation): the middle frame of each of ``count`` equal segments, the same
  every time;
- ``random`` (training): one random frame in each segment (TSN's segment sampling, Wang et
  al. 2016, Sec. 3.2), so that every epoch sees other frames of the same motion.

A clip shorter than ``count`` frames is either played again from the start (``short_clips:
loop``) or held on its last frame (``pad``).

The frame count comes from the container's packets, counted without decoding, never from its
header: a header can over-report the count, and decord then hangs reading frames that do not
exist (dmlc/decord#373). Two decoders read the chosen frames and return the same pixels:

- ``decord``: random access, the default where it installs (Linux x86_64 wheels only). A new
  reader per clip, rewound after reading, so that repeated ``get_batch`` calls do not grow
  memory (dmlc/decord#208, #197);
- ``pyav``: PyAV's sequential decode up to the last frame needed; its wheels bundle FFmpeg for
  every platform.

A file that cannot be read (empty, truncated, not a video) raises ``VideoDecodeError`` naming
it; datasets catch it and skip the clip, counted, under ``skip_bad_samples``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammut.data.errors import BadSampleError

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "random")
SHORT_CLIPS = ("loop", "pad")
BACKENDS = ("auto", "decord", "pyav")


class VideoDecodeError(BadSampleError):
    """A video file that cannot be read; the message names the file and what went wrong."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: cannot read this video: {reason}")
        self.path = Path(path)


def frame_indices(num_frames: int, count: int, sampling: str = "uniform", short_clips: str = "loop",
                  generator: torch.Generator | None = None) -> list[int]:
    """``count`` frame indices of a clip of ``num_frames`` frames, in time order."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if short_clips not in SHORT_CLIPS:
        raise ValueError(f"short_clips must be one of {SHORT_CLIPS}, got {short_clips!r}")
    if num_frames <= 0 or count <= 0:
        raise ValueError(f"need a positive frame count and number of frames to take, got {num_frames} and {count}")
    if num_frames < count:
        if short_clips == "loop":
            return [i % num_frames for i in range(count)]
        return [min(i, num_frames - 1) for i in range(count)]
    # Segment i covers frames [i * n / count, (i + 1) * n / count).
    starts = torch.arange(count, dtype=torch.float64) * num_frames / count
    length = num_frames / count
    if sampling == "uniform":
        offsets = torch.full((count,), length / 2, dtype=torch.float64)
    else:
        offsets = torch.rand(count, generator=generator, dtype=torch.float64) * length
    return (starts + offsets).floor().clamp(max=num_frames - 1).long().tolist()


@contextmanager
def _open(path: str | Path) -> Iterator[tuple[Any, Any]]:
    """The PyAV container of a video file and its video stream; any failure is a ``VideoDecodeError``."""
    import av

    if not Path(path).is_file():
        raise VideoDecodeError(path, "no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "it has no video stream")
            # FFmpeg reads a still image as a video of one frame; as a clip it would be a silent mistake.
            if container.format.name == "image2" or container.format.name.endswith("_pipe"):
                raise VideoDecodeError(path, f"it is a still image ({container.format.name}), not a video")
            yield container, container.streams.video[0]
    except VideoDecodeError:
        raise
    except Exception as error:  # PyAV raises its own FFmpeg error classes, and OSError
        raise VideoDecodeError(path, f"{type(error).__name__}: {error}") from error


def _count_packets(path: str | Path, container, stream) -> int:
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    if count == 0:
        raise VideoDecodeError(path, "its video stream holds no frames")
    return count


def count_frames(path: str | Path) -> int:
    """The video stream's frames, counted from its packets (demuxed, not decoded)."""
    with _open(path) as (container, stream):
        return _count_packets(path, container, stream)


def _read_with_decord(path: Path, indices: list[int]) -> np.ndarray:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        frames = reader.get_batch(indices).asnumpy()
        reader.seek(0)  # releases decoder buffers that repeated get_batch calls otherwise keep
        del reader
        return frames
    except Exception as error:  # decord raises DECORDError or RuntimeError
        decord_error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}"
    # decord also fails on some files that FFmpeg reads well (a frame 48 pixels wide, for one):
    # PyAV decides whether the file is bad.
    try:
        frames = _read_with_pyav(path, indices)
    except VideoDecodeError as error:
        raise VideoDecodeError(path, f"{decord_error} (decord); {str(error).split(': ', 2)[-1]} (PyAV)") from None
    log.warning("%s: decord could not read it (%s); read with PyAV instead", path, decord_error)
    return frames


def _read_with_pyav(path: Path, indices: list[int]) -> np.ndarray:
    with _open(path) as (container, stream):
        return _decode_with_pyav(path, container, stream, indices)


@functools.cache
def _rgb_reformatter():
    """One FFmpeg colour converter per process, reused for every frame: ``frame.to_ndarray(format=
    "rgb24")`` sets up a new one per frame, which took over half of PyAV's time per demo clip
    (bench/RESULTS.md). The pixels are the same."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def _decode_with_pyav(path: Path, container, stream, indices: list[int]) -> np.ndarray:
    """Sequential decoding up to the last index; one thread, as DataLoader workers decode in parallel
    already (FFmpeg's frame threads cost more than they give on small frames)."""
    wanted, frames, to_rgb = set(indices), {}, _rgb_reformatter()
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = to_rgb.reformat(frame, format="rgb24").to_ndarray()
            if index >= max(wanted):
                break
    except Exception as error:
        raise VideoDecodeError(path, f"{type(error).__name__}: {error}") from error
    if missing := sorted(wanted - set(frames)):
        raise VideoDecodeError(path, f"decoding ended before frame {missing[0]} of the {len(indices)} requested")
    return np.stack([frames[index] for index in indices])


_READERS = {"decord": _read_with_decord, "pyav": _read_with_pyav}


def resolve_backend(backend: str = "auto") -> str:
    """``auto``: decord where it is installed, else PyAV. Asking for decord where it is not installed fails."""
    if backend not in BACKENDS:
        raise ValueError(f"video backend must be one of {BACKENDS}, got {backend!r}")
    has_decord = importlib.util.find_spec("decord") is not None
    if backend == "decord" and not has_decord:
        raise ValueError("video backend 'decord' is not installed (its wheels exist for Linux x86_64 only); "
                         "use backend 'pyav' or 'auto'")
    return backend if backend != "auto" else "decord" if has_decord else "pyav"


def read_frames(path: str | Path, indices: list[int], backend: str = "auto") -> np.ndarray:
    """The frames at ``indices`` (repeats allowed, any order), as (len(indices), H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "no such file")
    unique = sorted(set(indices))
    return _in_order(_READERS[resolve_backend(backend)](path, unique), unique, indices)


def _in_order(frames: np.ndarray, unique: list[int], indices: list[int]) -> np.ndarray:
    """Frames decoded once each, at the sorted ``unique`` indices, laid out as ``indices`` asks."""
    position = {index: i for i, index in enumerate(unique)}
    return frames[[position[index] for index in indices]]


def read_clip(path: str | Path, count: int, sampling: str = "uniform", short_clips: str = "loop",
              backend: str = "auto", generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` frames of the video at ``path``, chosen by ``frame_indices``: (count, H, W, 3) uint8."""
    if resolve_backend(backend) == "decord":
        indices = frame_indices(count_frames(path), count, sampling, short_clips, generator)
        return torch.from_numpy(read_frames(path, indices, backend))
    # PyAV counts and decodes in one opening of the file.
    with _open(path) as (container, stream):
        indices = frame_indices(_count_packets(path, container, stream), count, sampling, short_clips, generator)
        container.seek(0)
        unique = sorted(set(indices))
        frames = _decode_with_pyav(Path(path), container, stream, unique)
    return torch.from_numpy(_in_order(frames, unique, indices))
