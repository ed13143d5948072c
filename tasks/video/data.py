"""Video captioning and video QA: the captioning and VQA tasks, fed clips (MaMMUT Sec. 3.4 and 4.4).

    mammut fit --config configs/finetune_video_qa.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut fit --config configs/finetune_video_caption.yaml --model.init_from=...

There is no video task class: ``VQATask`` and ``PretrainTask`` train on whatever the batch
holds, and a batch of clips (B, 3, T, H, W) runs the encoder's tube path (``model/tubes.py``),
one pass of the same ViT per clip. What is video-specific is the data, here:

- ``VideoCaptionDataModule``: MSR-VTT captions (``*_videodatainfo.json``), evaluated with
  CIDEr-D and BLEU-4 of generated captions (and video-text retrieval, which the task adds);
- ``VideoQADataModule``: MSRVTT-QA or, with MSVD's ``youtube_mapping.txt``, MSVD-QA, evaluated
  by exact match with the one reference answer, broken down by the question's first word.

Clips are read with decord or PyAV (``backend``), ``frames`` per clip (by default the model's
``architecture.video_frames``); ``single_frame`` feeds one frame repeated instead, the
single-frame baseline that shows what the model gains from time.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from mammut.data.captions_dataset import collate_eval, collate_train
from mammut.data.coco import CaptionRecord
from mammut.data.transforms import clip_transform, normalize_clips
from mammut.data.video import read_clip, resolve_backend
from mammut.data.video_dataset import ClipSampling, VideoCaptionDataset, VideoQADataset
from mammut.data.video_records import read_msrvtt_captions, read_video_qa
from mammut.data.vqa import VQARecord
from mammut.tasks.datamodule import TaskDataModule
from mammut.tasks.pretrain import CaptionInputs, caption_inputs
from mammut.tasks.vqa import QuestionData

log = logging.getLogger(__name__)


class VideoDataModule(TaskDataModule):
    """What the video data modules add to ``TaskDataModule``: clips read from video files,
    ``frames`` per clip, sized by the model like the image size."""

    model_settings = ("image_size", "context_length", "frames")

    def __init__(self, frames: int | None = None, backend: str = "auto", short_clips: str = "loop",
                 single_frame: bool = False, crop_scale: tuple[float, float] | None = None, **kwargs):
        """
        Args:
            frames: frames per clip; by default the model's ``architecture.video_frames``.
            backend: "decord", "pyav", or "auto" (decord where installed).
            short_clips: a clip of fewer frames is played again ("loop") or held on its last frame ("pad").
            single_frame: feed one frame repeated: the single-frame baseline.
            crop_scale: e.g. ``[0.8, 1.0]``: each training clip is cut to a random window of this
                fraction of each side, the same window in every frame (so that a motion keeps its
                direction), then resized. None: whole frames. Evaluation always sees whole frames.
            **kwargs: those of ``TaskDataModule``: root, tokenizer, image_size, context_length,
                num_workers, skip_bad_samples, seed (of shuffling, draws and training frame offsets).
        """
        super().__init__(**kwargs)
        self.frames = frames
        self.save_arguments(locals())

    def videos_of(self, split: str) -> Path:
        """The folder of a split's video files: ``videos``, or its entry for the split when it names
        one folder per split (MSR-VTT as distributed: ``TrainValVideo/`` and ``TestVideo/``)."""
        videos = self.hparams.videos
        if isinstance(videos, str):
            return self.path(videos)
        if split not in videos:
            raise ValueError(f"data.videos names folders for {sorted(videos)}, not for the {split} split")
        return self.path(videos[split])

    @property
    def clip_sampling(self) -> ClipSampling:
        h = self.hparams
        return ClipSampling(self.frames, h.backend, h.short_clips, h.single_frame,
                            tuple(h.crop_scale) if h.crop_scale is not None else None)

    def build_dataset(self, split: str) -> Dataset:
        h, clips = self.hparams, self.clip_sampling
        log.info("%s clips: %d frames each, read with %s%s", split, clips.frames, resolve_backend(clips.backend),
                 ", one frame repeated (single-frame baseline)" if clips.single_frame else "")
        return self.dataset_class(self.read_records(split), self.tokenizer, clip_transform(self.image_size),
                                  self.context_length, train=split == "train", seed=h.seed,
                                  skip_bad_samples=h.skip_bad_samples, clips=clips, **self.dataset_arguments())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's model input: (3, T, H, W) clips."""
        return (3, self.frames, self.image_size, self.image_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The clips leave the workers as uint8 (``clip_transform``); they become normalised floats
        here, once the batch is on its device."""
        if isinstance(batch, dict):  # prediction: {"image": clips, "path": ...}
            return {**batch, "image": normalize_clips(batch["image"])}
        if len(batch) == 0:
            return batch  # every sample was bad: the module feeds the task's empty batch instead
        return dataclasses.replace(batch, images=normalize_clips(batch.images))


class VideoCaptionDataModule(VideoDataModule):
    """Videos with captions in MSR-VTT's ``videodatainfo`` schema: the demo clips, MSR-VTT, or your own."""

    dataset_class = VideoCaptionDataset
    collate_train, collate_eval = staticmethod(collate_train), staticmethod(collate_eval)

    def __init__(
        self,
        train_annotations: str = "video/train_videodatainfo.json",
        val_annotations: str = "video/val_videodatainfo.json",
        test_annotations: str | None = "video/test_videodatainfo.json",
        videos: str | dict[str, str] = "video/videos",
        video_pattern: str = "{video}.mp4",
        split_names: dict[str, str] | None = None,
        predict_videos: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 100,
        **kwargs,
    ):
        """
        Args:
            train_annotations: MSR-VTT JSON holding the training split, relative to ``root``
                (MSR-VTT itself: ``train_val_videodatainfo.json`` for both train and val);
                ``val_`` and ``test_`` likewise.
            videos: the folder of the video files, found by ``video_pattern`` from a ``video_id``;
                or one folder per split, e.g. MSR-VTT's ``{train: TrainValVideo, val: TrainValVideo,
                test: TestVideo}``.
            split_names: our split -> the ``split`` value in the file; MSR-VTT's by default
                (``{train: train, val: validate, test: test}``).
            predict_videos: video files to caption with ``mammut predict``.
            batch_size: training clips per step and device.
            eval_batch_size: clips per evaluation step.
            **kwargs: those of ``VideoDataModule`` (frames, backend, short_clips, single_frame)
                and ``TaskDataModule`` (root, tokenizer, image_size, context_length, ...).
        """
        super().__init__(**kwargs)
        self.save_arguments(locals())

    def read_split(self, split: str) -> tuple[list[CaptionRecord], int, Path]:
        h = self.hparams
        annotations = h[f"{split}_annotations"]
        if annotations is None:
            raise ValueError(f"data.{split}_annotations is not set")
        names = {"train": "train", "val": "validate", "test": "test", **(h.split_names or {})}
        records, skipped = read_msrvtt_captions(self.path(annotations), self.videos_of(split), names[split],
                                                h.video_pattern, h.skip_bad_samples)
        return records, skipped, self.path(annotations)

    def task_inputs(self, task: str) -> CaptionInputs:
        """The training captions (the most frequent is the captioning baseline) and the clip shape."""
        return caption_inputs(self.records, self.input_shape)

    def predict_dataloader(self) -> DataLoader:
        paths = self.hparams.predict_videos
        if not paths:
            raise ValueError("nothing to predict: set --data.predict_videos=[clip.mp4, ...]")
        return DataLoader(VideoFiles(paths, self.clip_sampling, clip_transform(self.image_size)),
                          batch_size=self.hparams.eval_batch_size)


class VideoFiles(Dataset):
    """Video files given by path, for prediction: each a clip of uniformly sampled frames."""

    def __init__(self, paths: list[str], clips: ClipSampling, transform):
        self.paths, self.clips, self.transform = list(paths), clips, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path, clips = self.paths[index], self.clips
        frames = read_clip(path, clips.frames, "uniform", clips.short_clips, clips.backend)
        return {"image": self.transform(frames), "path": path}


class VideoQADataModule(QuestionData, VideoDataModule):
    """Open-ended questions about videos in MSRVTT-QA's schema, or MSVD-QA's with its mapping file."""

    dataset_class = VideoQADataset
    # One reference answer per question: exact match, broken down by the question's first word.
    answer_scoring = "exact_match"
    groupings = ("question_type",)
    predict_inputs = "predict_videos"

    def __init__(
        self,
        train_questions: str = "video/train_qa.json",
        val_questions: str = "video/val_qa.json",
        test_questions: str | None = "video/test_qa.json",
        videos: str | dict[str, str] = "video/videos",
        video_pattern: str = "{video}.mp4",
        msvd_mapping: str | None = None,
        predict_videos: list[str] | None = None,
        predict_questions: list[str] | None = None,
        answer_room: int = 6,
        batch_size: int = 64,
        eval_batch_size: int = 200,
        **kwargs,
    ):
        """
        Args:
            train_questions: MSRVTT-QA-style JSON list of ``question``, ``answer``, ``id``,
                ``video_id``, relative to ``root``.
            videos: the folder of the video files, or one per split (as for captions);
                ``video_pattern`` names a file from its video, ``video7`` for MSRVTT-QA's
                ``video_id`` 7, or MSVD's clip name (``{video}.avi``).
            msvd_mapping: MSVD's ``youtube_mapping.txt``: read the questions as MSVD-QA.
            predict_videos: video files to ask about with ``mammut predict``.
            predict_questions: one question per video, or one question for all of them.
            answer_room: tokens kept for the answer and its end of text: a longer question is
                cut to leave them, the same in training and evaluation. The demo's answers take
                up to 5 tokens of the image-trained tokenizer.
            batch_size: training questions per step and device.
            eval_batch_size: questions per evaluation step.
            **kwargs: those of ``VideoDataModule`` (frames, backend, short_clips, single_frame)
                and ``TaskDataModule`` (root, tokenizer, image_size, context_length, ...).
        """
        super().__init__(**kwargs)
        self.save_arguments(locals())

    def read_split(self, split: str) -> tuple[list[VQARecord], int, Path]:
        h = self.hparams
        questions = h[f"{split}_questions"]
        if questions is None:
            raise ValueError(f"data.{split}_questions is not set")
        records, skipped = read_video_qa(self.path(questions), self.videos_of(split), h.video_pattern,
                                         h.msvd_mapping and self.path(h.msvd_mapping), h.skip_bad_samples)
        return records, skipped, self.path(questions)
