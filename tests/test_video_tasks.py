"""Video captioning and video QA: the captioning and VQA tasks fed clips read from real mp4 files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import tiny_run
from mammut.data import CaptionTokenizer
from mammut.data.captions_dataset import collate_train
from mammut.data.errors import BadSampleError
from mammut.data.transforms import CLIP_MEAN, CLIP_STD, clip_transform
from mammut.data.video import read_clip
from mammut.data.video_dataset import ClipSampling, VideoCaptionDataset, VideoQADataset
from mammut.data.video_records import read_msrvtt_captions, read_video_qa
from mammut.data.vqa_dataset import collate_vqa
from mammut.metrics.vqa import VQAAccuracy, exact_match_accuracy
from mammut.tasks.joint_data import JointDataModule
from mammut.tasks.video import VideoCaptionDataModule, VideoQADataModule
from mammut.tasks.vqa import VQATask

QA = "configs/finetune_video_qa.yaml"
CAPTION = "configs/finetune_video_caption.yaml"
# The tubes' fixed 3D position embedding needs a width divisible by 6.
VIDEO_WIDTH = ["--model.architecture.vision_width=48", "--model.architecture.vision_heads=2"]


@pytest.fixture(scope="module")
def pretrained(tiny_demo, tmp_path_factory) -> Path:
    """An image pretraining checkpoint of the video model's shape, as `make finetune-video` starts from."""
    out = tmp_path_factory.mktemp("pretrain")
    tiny_run.run("fit", tiny_demo, out, *VIDEO_WIDTH, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                 *tiny_run.checkpoint_every(out, 2))
    return next(out.rglob("last.ckpt"))


def qa_records(root: Path, split: str = "train"):
    return read_video_qa(root / f"video/{split}_qa.json", root / "video/videos")[0]


def qa_dataset(root: Path, records, train: bool = True, skip: bool = False, frames: int = 16,
               **sampling) -> VideoQADataset:
    return VideoQADataset(records, CaptionTokenizer.from_file(root / "tokenizer.json"), clip_transform(64), 24,
                          train=train, clips=ClipSampling(frames, **sampling), skip_bad_samples=skip)


@pytest.mark.slow
def test_video_qa_fine_tunes_from_an_image_checkpoint_and_reports_exact_match(tiny_demo, tmp_path, pretrained,
                                                                              capsys):
    out = tmp_path / "qa"
    capsys.readouterr()
    tiny_run.run("fit", tiny_demo, out, *VIDEO_WIDTH, f"--model.init_from={pretrained}", "--trainer.max_steps=2",
                 "--trainer.val_check_interval=2", "--trainer.logger.init_args.version=run", config=QA)
    printed, messages = capsys.readouterr()
    assert "read with" in messages  # the log names the decoder
    # The question types of the demo clips: direction ("which"), colour change ("what"), size change ("does").
    for row in ("accuracy", "question_type/which", "question_type/what", "question_type/does"):
        assert re.search(rf"^{re.escape(row)}\s+[\d.]+\s+[\d.]+\s+\d+$", printed, re.MULTILINE), row
    logs = out / "finetune_video_qa" / "run"
    logged = tiny_run.scalars(logs)
    assert {"train/vqa/answer_loss", "val/vqa/accuracy", "val_baseline/vqa/accuracy"} <= set(logged)
    # Exact match against one answer: the majority answer per question type scores well above 0.
    assert 0.1 < logged["val_baseline/vqa/accuracy"][-1][1] < 0.9
    assert "val/vqa/samples" in tiny_run.image_tags(logs)

    video = sorted((tiny_demo / "video/videos").glob("*.mp4"))[0]
    tiny_run.run("predict", tiny_demo, tmp_path / "predict", *VIDEO_WIDTH,
                 f"--ckpt_path={logs / 'checkpoints' / 'last.ckpt'}", f"--data.predict_videos=[{video}]",
                 "--data.predict_questions=[which way does the circle move?]", config=QA)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(video)))
    assert line.split("\t")[:2] == [str(video), "which way does the circle move?"]


@pytest.mark.slow
def test_the_prefix_peft_trains_on_clips_with_the_whole_model_frozen(tiny_demo, tmp_path, pretrained):
    start = tmp_path / "start.pt"
    tiny_run.run("fit", tiny_demo, tmp_path / "peft", *VIDEO_WIDTH, f"--model.init_from={pretrained}",
                 "--trainer.max_steps=2", "--model.peft.visual_layers=[0,1]", "--trainer.limit_val_batches=0",
                 *tiny_run.checkpoint_every(tmp_path, 2, snapshot=start), config=[QA, "configs/finetune_vqa_peft.yaml"])
    before = torch.load(start, weights_only=True)
    after = torch.load(next((tmp_path / "peft").rglob("last.ckpt")), weights_only=True)["state_dict"]
    changed = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert changed == {f"tasks.vqa.prefix.{name}" for name in ("projection.weight", "projection.bias", "prompt")} \
        | {"model.token_use.counts"}  # a record of the tokens training met, not a weight
    assert any(name.startswith("model.vision.tubes.") for name in after)  # the clips went through the tubes


@pytest.mark.slow
def test_lora_adapts_video_qa_and_its_adapter_checkpoint_holds_the_tubes(tiny_demo, tmp_path, pretrained):
    """The LoRA overlay is a setting of the shared model, so it adapts video QA as it does VQA. The
    tubes, which the image checkpoint lacks, are saved beside the adapters: the base cannot restore them."""
    start = tmp_path / "start.pt"
    tiny_run.run("fit", tiny_demo, tmp_path / "lora", *VIDEO_WIDTH, f"--model.init_from={pretrained}",
                 "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                 *tiny_run.checkpoint_every(tmp_path, 2, snapshot=start), config=[QA, "configs/finetune_vqa_lora.yaml"])
    before = torch.load(start, weights_only=True)
    after = torch.load(next((tmp_path / "lora").rglob("last.ckpt")), weights_only=True)["state_dict"]
    after.pop("model.token_use.counts")  # a record of the tokens training met, not a weight
    changed = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert changed and all(".lora_" in name for name in changed)
    assert all(".lora_" in name or name.startswith("model.vision.tubes.") for name in after)
    assert any(name.startswith("model.vision.tubes.") for name in after)


@pytest.mark.slow
def test_video_captioning_fine_tunes_and_logs_frame_strips(tiny_demo, tmp_path, pretrained, capsys):
    out = tmp_path / "caption"
    capsys.readouterr()
    tiny_run.run("fit", tiny_demo, out, *VIDEO_WIDTH, f"--model.init_from={pretrained}", "--trainer.max_steps=2",
                 "--trainer.val_check_interval=2", "--trainer.logger.init_args.version=run", config=CAPTION)
    printed = capsys.readouterr().out
    for row in ("CIDEr-D", "BLEU-4", "image_to_text/R@1"):
        assert re.search(rf"^{re.escape(row)}\s+[\d.]+\s+[\d.]+$", printed, re.MULTILINE), row
    logs = out / "finetune_video_caption" / "run"
    logged = tiny_run.scalars(logs)
    assert {"train/video_caption/caption_loss", "val/video_caption/CIDEr-D", "val_baseline/video_caption/CIDEr-D"} <= set(logged)
    events = tiny_run.EventAccumulator(str(logs), size_guidance={"images": 0})
    events.Reload()
    strip = events.Images("val/video_caption/samples")[0]
    # TensorBoard tiles the 8 val clips in a row; each is 8 of its 16 frames side by side, at twice their size.
    assert strip.width == 8 * (8 * 64 * 2)

    video = sorted((tiny_demo / "video/videos").glob("*.mp4"))[0]
    tiny_run.run("predict", tiny_demo, tmp_path / "predict", *VIDEO_WIDTH,
                 f"--ckpt_path={logs / 'checkpoints' / 'last.ckpt'}", f"--data.predict_videos=[{video}]", config=CAPTION)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(video)))
    assert len(line.split("\t")) == 2  # the video and its generated caption


def test_a_clip_is_read_into_frames_and_the_single_frame_baseline_repeats_one(tiny_demo):
    records = qa_records(tiny_demo)
    moving = qa_dataset(tiny_demo, records, train=False)[0].image
    static = qa_dataset(tiny_demo, records, train=False, single_frame=True)[0].image
    assert moving.shape == static.shape == (3, 16, 64, 64)
    assert not torch.equal(moving[:, 0], moving[:, -1])  # the demo objects move, turn or grow
    assert all(torch.equal(static[:, t], static[:, 0]) for t in range(16))
    assert torch.equal(static[:, 0], moving[:, 8])  # the middle frame of those sampled


def test_training_frames_are_drawn_per_epoch_and_repeat_on_resume(tiny_demo):
    def frames_of(dataset, epoch):
        dataset.set_epoch(epoch)
        return dataset[3].image

    # 8 of the clip's 16 frames: one drawn from each pair of frames.
    first, second = (qa_dataset(tiny_demo, qa_records(tiny_demo), frames=8) for _ in range(2))
    assert torch.equal(frames_of(first, 0), frames_of(second, 0))  # the same draw in another dataset (a resumed run)
    assert not torch.equal(frames_of(first, 0), frames_of(first, 1))  # another epoch, other frames


def test_a_training_crop_is_one_window_for_every_frame_drawn_anew_each_epoch(tiny_demo):
    """The window moves from epoch to epoch, but never between the frames of a clip: a crop that
    moved would change which way an object seems to go."""
    def clip(crop_scale, epoch: int = 0, train: bool = True):
        dataset = VideoQADataset(qa_records(tiny_demo), CaptionTokenizer.from_file(tiny_demo / "tokenizer.json"),
                                 lambda frames: frames, 24, train=train,  # the frames (T, H, W, 3) as read
                                 clips=ClipSampling(16, crop_scale=crop_scale))
        dataset.set_epoch(epoch)
        return dataset[5].image

    def window(cropped, whole) -> tuple[int, int]:
        """Where ``cropped`` lies in ``whole``, found in all frames at once."""
        side = cropped.shape[1]
        return next((top, left) for top in range(whole.shape[1] - side + 1) for left in range(whole.shape[2] - side + 1)
                    if torch.equal(whole[:, top:top + side, left:left + side], cropped))

    whole = clip(None)
    cropped = clip((0.5, 0.5))
    assert cropped.shape == (16, 32, 32, 3) and whole.shape == (16, 64, 64, 3)
    first = window(cropped, whole)
    assert window(clip((0.5, 0.5), epoch=1), clip(None, epoch=1)) != first  # another epoch, another window
    assert torch.equal(clip((0.5, 0.5), train=False), clip(None, train=False))  # evaluation: whole frames
    with pytest.raises(ValueError, match="crop_scale"):
        ClipSampling(16, crop_scale=(0.9, 0.5))


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a video"])
def test_a_bad_video_is_named_or_skipped_and_counted(tiny_demo, tmp_path, damage):
    records = qa_records(tiny_demo)[:3]
    good = records[1].path.read_bytes()
    bad = tmp_path / records[1].path.name
    bad.write_bytes({"truncated": good[: len(good) // 3], "empty": b"", "not a video": b"question,answer\n"}[damage])
    records[1] = records[1].__class__(**{**records[1].__dict__, "path": bad})
    with pytest.raises(BadSampleError, match=re.escape(str(bad))):
        qa_dataset(tiny_demo, records)[1]
    batch = collate_vqa([qa_dataset(tiny_demo, records, skip=True)[i] for i in range(3)])
    assert len(batch) == 2 and batch.num_skipped == 1 and batch.images.shape == (2, 3, 16, 64, 64)


def test_captions_of_clips_collate_into_a_batch_of_clips(tiny_demo):
    records, _ = read_msrvtt_captions(tiny_demo / "video/train_videodatainfo.json", tiny_demo / "video/videos", "train")
    dataset = VideoCaptionDataset(records, CaptionTokenizer.from_file(tiny_demo / "tokenizer.json"), clip_transform(64),
                                  24, train=True, clips=ClipSampling(16))
    batch = collate_train([dataset[i] for i in range(4)])
    assert batch.images.shape == (4, 3, 16, 64, 64) and batch.tokens.shape == (4, 24)


def test_single_answer_datasets_are_scored_by_exact_match(tiny_demo):
    assert exact_match_accuracy("Left.", ["left"]) == 1.0 and exact_match_accuracy("right", ["left"]) == 0.0
    metric = VQAAccuracy(scoring="exact_match")
    metric.update(["left", "blue"], [["left"], ["red"]], torch.tensor([1, 2]))
    assert metric.compute() == {1: 1.0, 2: 0.0}
    data = VideoQADataModule(root=str(tiny_demo))
    data.connect(image_size=64, context_length=24, frames=16)
    data.setup("validate")
    inputs = data.task_inputs("vqa")
    assert isinstance(inputs, VQATask.inputs_type)
    assert inputs.answer_scoring == "exact_match" and inputs.input_shape == (3, 16, 64, 64)
    baseline = inputs.majority_baseline["val"]
    assert set(baseline.values()) <= {0.0, 1.0} and 0 < sum(baseline.values()) < len(baseline)


def test_clips_travel_as_uint8_and_are_normalised_once_on_the_device(tiny_demo):
    data = VideoQADataModule(root=str(tiny_demo), num_workers=0)
    data.connect(image_size=32, context_length=24, frames=16)  # 64-pixel clips: resized on the way
    data.setup("validate")
    sent = collate_vqa([data.dataset("val")[i] for i in range(2)])
    assert sent.images.dtype == torch.uint8 and sent.images.shape == (2, 3, 16, 32, 32)
    received = data.on_after_batch_transfer(sent, 0)
    # What the images' pipeline gives each frame: resize, then [0, 1] floats normalised by CLIP's statistics.
    frame_pipeline = v2.Compose([v2.Resize((32, 32), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                                 v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(CLIP_MEAN), list(CLIP_STD))])
    frames = read_clip(data.records["val"][0].path, 16, "uniform")
    torch.testing.assert_close(received.images[0], frame_pipeline(frames.permute(0, 3, 1, 2)).transpose(0, 1))
    # A joint run hands each task's batch to its own data module, in training and in evaluation.
    joint = JointDataModule({"vqa": data, "caption": VideoCaptionDataModule(root=str(tiny_demo))})
    assert torch.equal(joint.on_after_batch_transfer({"vqa": sent}, 0)["vqa"].images, received.images)
    assert torch.equal(joint.on_after_batch_transfer(sent, 0).images, received.images)
    with pytest.raises(TypeError, match="uint8"):
        data.on_after_batch_transfer(received, 0)  # normalising twice would be a silent mistake


def msrvtt_layout(tiny_demo: Path, root: Path) -> Path:
    """The demo's clips as MSR-VTT is distributed: train and val clips in TrainValVideo/, test clips in TestVideo/."""
    shutil.copytree(tiny_demo, root, ignore=shutil.ignore_patterns("videos"))
    for split, folder in (("train", "TrainValVideo"), ("val", "TrainValVideo"), ("test", "TestVideo")):
        (root / folder).mkdir(exist_ok=True)
        for video in json.loads((root / f"video/{split}_videodatainfo.json").read_text())["videos"]:
            shutil.copy(tiny_demo / "video/videos" / f"{video['video_id']}.mp4", root / folder)
    return root


def test_msrvtt_videos_are_read_from_a_folder_per_split_as_distributed(tiny_demo, tmp_path):
    root = msrvtt_layout(tiny_demo, tmp_path / "msrvtt")
    per_split = {"train": "TrainValVideo", "val": "TrainValVideo", "test": "TestVideo"}
    for data_class in (VideoCaptionDataModule, VideoQADataModule):
        data = data_class(root=str(root), videos=per_split, num_workers=0)
        data.connect(image_size=32, context_length=24, frames=4)
        data.setup("test")  # train (for the baselines) and test
        assert {r.path.parent.name for r in data.records["train"]} == {"TrainValVideo"}
        assert {r.path.parent.name for r in data.records["test"]} == {"TestVideo"}
        assert data.dataset("test")[0] is not None  # a clip decodes from its split's folder
    # One folder for every split no longer finds the test clips; a split without a folder is named.
    merged = VideoCaptionDataModule(root=str(root), videos="TrainValVideo", num_workers=0)
    merged.connect(image_size=32, context_length=24, frames=4)
    merged.setup("test")
    with pytest.raises(BadSampleError, match="TrainValVideo"):
        merged.dataset("test")[0]
    with pytest.raises(ValueError, match="data.videos names folders for .*not for the test split"):
        VideoCaptionDataModule(root=str(root), videos={"train": "TrainValVideo"}, num_workers=0).setup("test")
