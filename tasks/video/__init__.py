"""Video captioning and video QA: the captioning and VQA tasks, fed clips (MaMMUT Sec. 3.4 and 4.4).

    mammut fit --config configs/finetune_video_qa.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut fit --config configs/finetune_video_caption.yaml --model.init_from=...

There is no video task: ``PretrainTask`` and ``VQATask`` train on whatever the batch holds, and a
batch of clips runs the encoder's tube path. What is video-specific is the data (``data.py``).
"""

from mammut.tasks.video.data import VideoCaptionDataModule, VideoDataModule, VideoFiles, VideoQADataModule

__all__ = ["VideoCaptionDataModule", "VideoDataModule", "VideoFiles", "VideoQADataModule"]
