"""Caption and question datasets whose records point at videos: each sample's input is a clip.

The datasets are the image ones (``CaptionDataset``, ``VQADataset``) with ``read`` reading a
clip instead of an image, so everything else (caption and answer draws, the question layout,
collation, skipping bad samples) is theirs. A clip is (3, T, H, W), so a batch holds
(B, 3, T, H, W) and the encoder takes its video path.

Training takes one random frame per segment (TSN sampling) from the sample's own random
stream, ``(seed, epoch, index)``, so a resumed run sees the frames the interrupted run would
have; evaluation takes each segment's middle frame. With ``single_frame`` the clip is one frame
(the middle one of those chosen) repeated: the single-frame baseline, the same model fed no
motion. With ``crop_scale`` a training clip is cut to a random window, the same in every frame,
drawn from the same stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mammut.data.captions_dataset import CaptionDataset
from mammut.data.video import BACKENDS, SHORT_CLIPS, read_clip
from mammut.data.vqa_dataset import VQADataset


@dataclass(frozen=True)
class ClipSampling:
    """How a clip is read: ``frames`` per clip, the decoder (``backend``), what a clip shorter than
    ``frames`` becomes (``short_clips``: loop or pad), whether to repeat one frame instead, and
    the training crop (``crop_scale``)."""

    frames: int
    backend: str = "auto"
    short_clips: str = "loop"
    single_frame: bool = False
    # Training clips are cut to one random window, the same in every frame, whose side is this
    # fraction of the frame's (drawn uniformly), before the resize: objects shift and grow from
    # one epoch to the next while every motion keeps its direction. None: whole frames.
    crop_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.frames < 1:
            raise ValueError(f"frames must be positive, got {self.frames}")
        if self.backend not in BACKENDS:
            raise ValueError(f"video backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.short_clips not in SHORT_CLIPS:
            raise ValueError(f"short_clips must be one of {SHORT_CLIPS}, got {self.short_clips!r}")


class VideoRecords:
    """Mixed into an ``ImageRecordsDataset``: records' ``path`` is a video, read as a clip.

    ``transform`` takes frames (T, H, W, 3) uint8 (``mammut.data.transforms.clip_transform``).
    """

    def __init__(self, *args, clips: ClipSampling, **kwargs):
        super().__init__(*args, **kwargs)
        self.clips = clips

    def record_name(self, record) -> str:
        return f"video {record.path.name} (id {record.image_id})"

    def read(self, index: int) -> Tensor:
        clips = self.clips
        generator = None
        if self.train:
            generator = torch.Generator().manual_seed(self.draw(index, purpose="frames").getrandbits(63))
        frames = read_clip(self.records[index].path, clips.frames, "random" if self.train else "uniform",
                           clips.short_clips, clips.backend, generator)
        if clips.single_frame:
            frames = frames[len(frames) // 2].expand_as(frames)
        if self.train and clips.crop_scale is not None:
            frames = self.crop(frames, index)
        return self.transform(frames)

    def crop(self, frames: Tensor, index: int) -> Tensor:
        """Frames (T, H, W, 3) cut to sample ``index``'s random window of this epoch, one for all frames."""
        draw = self.draw(index, purpose="crop")
        scale = draw.uniform(*self.clips.crop_scale)
        height, width = frames.shape[1:3]
        crop_height, crop_width = max(1, round(scale * height)), max(1, round(scale * width))
        top, left = draw.randint(0, height - crop_height), draw.randint(0, width - crop_width)
        return frames[:, top:top + crop_height, left:left + crop_width]


class VideoCaptionDataset(VideoRecords, CaptionDataset):
    """MSR-VTT-style video captions: ``CaptionRecord``s whose paths are videos."""


class VideoQADataset(VideoRecords, VQADataset):
    """MSRVTT-QA-style questions about videos: ``VQARecord``s whose paths are videos."""

    def record_name(self, record) -> str:
        return f"question id {record.question_id} (video {record.path.name})"
