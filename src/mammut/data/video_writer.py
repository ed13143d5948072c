"""Writing mp4 clips with PyAV (H.264), for the demo world and the tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, pixel_format: str = "yuv420p",
                frame_times: list[float] | None = None, faststart: bool = False) -> Path:
    """Writes ``frames`` ((T, H, W, 3) uint8 RGB) as an H.264 mp4.

    ``frame_times``: each frame's time in seconds, for a variable frame rate; by default
    ``i / fps``. ``yuv420p`` (what players and decord expect) needs an even width and height;
    ``yuv444p`` takes any size. ``faststart``: the index (``moov``) before the frames, as
    files made for streaming have it, rather than after them.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = Fraction(1, 1000)
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pixel_format
        stream.time_base = stream.codec_context.time_base = time_base  # millisecond timestamps: any frame rate
        # Every frame a key frame and no B-frames: exact, and cheap to seek, for clips this small.
        stream.options = {"crf": "18", "g": "1", "bf": "0"}
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            seconds = frame_times[index] if frame_times is not None else index / fps
            frame.pts, frame.time_base = round(seconds / time_base), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
