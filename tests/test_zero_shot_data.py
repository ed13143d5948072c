"""Zero-shot classification data: the ImageFolder and CLIP_benchmark WebDataset readers, the stream
shared out over ranks and workers, bad files, the shipped ImageNet lists, the demo split, the metric."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader

from mammut.data.batch import ClassificationBatch
from mammut.data.benchmark_wds import write_classification
from mammut.data.classification import (
    DataFormatError,
    read_image_folder,
    read_templates,
    read_wds,
    resolve_list,
)
from mammut.data.classification_dataset import PADDING, ClassificationStream, collate_classification
from mammut.data.demo.classification import main as write_demo_classification
from mammut.data.errors import BadSampleError
from mammut.data.transforms import image_transform
from mammut.metrics.classification import ZeroShotAccuracy, chance_accuracy

from conftest import REPO


def demo_lists(demo: Path) -> tuple[Path, Path]:
    folder = demo / "classification"
    return folder / "classnames.txt", folder / "zeroshot_classification_templates.txt"


@pytest.fixture
def mixed_formats(tiny_demo, tmp_path) -> Path:
    """Eight classes of the demo's val split, one image of each class re-encoded as PNG and one as WebP."""
    folder = tmp_path / "images"
    classes = sorted(p for p in (tiny_demo / "classification/val").iterdir())[:8]
    for class_dir in classes:
        shutil.copytree(class_dir, folder / class_dir.name)
    for n, class_dir in enumerate(sorted(folder.iterdir())):
        first = sorted(class_dir.iterdir())[0]
        kind = ("PNG", "WEBP")[n % 2]
        Image.open(first).save(first.with_suffix("." + kind.lower()), format=kind, lossless=True)
        first.unlink()
    names = [line for line in demo_lists(tiny_demo)[0].read_text().splitlines()][:8]
    (tmp_path / "classnames.txt").write_text("\n".join(names) + "\n")
    return folder


def test_shipped_imagenet_lists_and_their_package_data():
    names = resolve_list("imagenet1k", "classnames", Path("."))
    templates = read_templates(resolve_list("imagenet1k", "templates", Path(".")))
    classnames = names.read_text().splitlines()
    assert len(classnames) == 1000 and classnames[0] == "tench" and classnames[-1] == "toilet paper"
    assert len(templates) == 80 and templates[0] == "a bad photo of a {c}."
    assert '"mammut.data" = ["zero_shot/*.txt"]' in (REPO / "pyproject.toml").read_text()  # a wheel carries them


def test_image_folder_labels_follow_the_sorted_folders(tiny_demo):
    classnames, templates = demo_lists(tiny_demo)
    dataset = read_image_folder(tiny_demo / "classification/val", classnames, templates)
    assert len(dataset.classnames) == 42 and len(dataset.images) == 84
    for image in dataset.images:  # the demo names each folder after its class
        assert Path(image.source).parent.name == dataset.classnames[image.label].replace(" ", "_")


def test_a_class_names_file_of_another_length_is_refused_naming_both(tiny_demo, tmp_path):
    short = tmp_path / "classnames.txt"
    short.write_text("red circle\nblue square\n")
    with pytest.raises(DataFormatError, match=r"classnames.txt: 2 class names, but .* has 42 class folders"):
        read_image_folder(tiny_demo / "classification/val", short, demo_lists(tiny_demo)[1])


@pytest.mark.parametrize("line, problem", [("a photo of a {}.", "may hold only"), ("a photo.", "once"),
                                           ("{c} and {c}", "once")])
def test_a_template_must_name_the_class_once_as_c(tmp_path, line, problem):
    (file := tmp_path / "templates.txt").write_text(f"a photo of a {{c}}.\n{line}\n")
    with pytest.raises(DataFormatError, match=f"templates.txt: line 2 .*{problem}"):
        read_templates(file)


def test_the_webdataset_layout_reads_back_what_was_written_pixel_for_pixel(mixed_formats, tmp_path):
    """Written by the project's command from an ImageFolder tree of JPEG, PNG and WebP files; the
    tars hold the same bytes, so both readers give the same tensors and labels."""
    classnames = tmp_path / "classnames.txt"
    (templates := tmp_path / "templates.txt").write_text("a single {c}\n")
    write_classification(mixed_formats, classnames, templates, tmp_path / "wds", samples_per_shard=5)
    folder = read_image_folder(mixed_formats, classnames, templates)
    shards = read_wds(tmp_path / "wds", "test")
    assert len(shards.shards) == 4 and (tmp_path / "wds/test/nshards.txt").read_text().strip() == "4"
    members = {name.rsplit(".", 1)[1] for shard in shards.shards for name in tarfile.open(shard).getnames()}
    assert members == {"cls", "jpg", "png", "webp"}
    assert [image.label for image in shards.images] == [image.label for image in folder.images]
    assert shards.classnames == folder.classnames and shards.templates == ["a single {c}"]
    transform = image_transform(32, train=False)
    from_folder = list(ClassificationStream(folder, "folder", transform, 32))
    from_shards = list(ClassificationStream(shards, "shards", transform, 32))
    assert len(from_shards) == len(folder.images) == 16
    for (a, label_a), (b, label_b) in zip(from_folder, from_shards):
        assert label_a == label_b and torch.equal(a, b)


def share(dataset, rank: int, world_size: int, workers: int) -> tuple[list[torch.Tensor], list[int], int]:
    """What one rank's loader yields: its images, labels (padding included) and number of batches."""
    stream = ClassificationStream(dataset, "x", image_transform(32, train=False), 32)
    stream.rank, stream.world_size = rank, world_size
    images, labels, batches = [], [], 0
    for batch in DataLoader(stream, batch_size=3, num_workers=workers, collate_fn=collate_classification("x")):
        images.extend(batch.images)
        labels.extend(batch.labels.tolist())
        batches += 1
    return images, labels, batches


def test_ranks_and_workers_read_every_sample_once_and_run_the_same_number_of_batches(mixed_formats, tmp_path):
    shutil.rmtree(sorted(mixed_formats.iterdir())[-1])  # 7 classes, 14 images: 2 ranks × 2 workers, two padded
    classnames = tmp_path / "classnames.txt"
    classnames.write_text("".join(classnames.read_text().splitlines(keepends=True)[:7]))
    (templates := tmp_path / "templates.txt").write_text("a single {c}\n")
    write_classification(mixed_formats, classnames, templates, tmp_path / "wds", samples_per_shard=6)
    dataset = read_wds(tmp_path / "wds", "test")
    every, _, _ = share(dataset, 0, 1, workers=0)
    parts = [share(dataset, rank, 2, workers=2) for rank in (0, 1)]
    assert parts[0][2] == parts[1][2]  # the same number of batches on both ranks
    labels = [label for _, rank_labels, _ in parts for label in rank_labels]
    assert len(labels) == 16 and labels.count(PADDING) == 2
    seen = sorted(image.numpy().tobytes() for images, rank_labels, _ in parts
                  for image, label in zip(images, rank_labels) if label != PADDING)
    assert len(every) == 14 and seen == sorted(image.numpy().tobytes() for image in every)  # each once


def test_a_bad_image_in_a_shard_is_named_or_counted(mixed_formats, tmp_path):
    classnames = tmp_path / "classnames.txt"
    (templates := tmp_path / "templates.txt").write_text("a single {c}\n")
    write_classification(mixed_formats, classnames, templates, tmp_path / "wds")
    shard = tmp_path / "wds/test/0.tar"
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    with wds.TarWriter(str(shard)) as writer:
        for n, sample in enumerate(samples):
            sample = {k: v for k, v in sample.items() if k in ("__key__", "cls", "jpg", "png", "webp")}
            if n == 3:
                sample = {"__key__": sample["__key__"], "cls": sample["cls"], "jpg": b"not a JPEG at all"}
            writer.write(sample)
    dataset = read_wds(tmp_path / "wds", "test")
    stream = ClassificationStream(dataset, "x", image_transform(32, train=False), 32)
    with pytest.raises(BadSampleError, match=r"0\.tar: sample '00000003'.*cannot decode"):
        list(stream)
    stream.skip_bad_samples = True
    batch = collate_classification("x")(list(stream))
    assert isinstance(batch, ClassificationBatch) and batch.num_skipped == 1 and len(batch) == 15


def test_an_image_without_a_label_is_refused_naming_shard_and_key(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test/nshards.txt").write_text("1\n")
    (tmp_path / "classnames.txt").write_text("circle\nsquare\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    with wds.TarWriter(str(tmp_path / "test/0.tar")) as writer:
        writer.write({"__key__": "a", "png": image.getvalue(), "cls": 1})
        writer.write({"__key__": "b", "png": image.getvalue()})
        writer.write({"__key__": "c", "png": image.getvalue(), "cls": 2})
    with pytest.raises(DataFormatError, match=r"0\.tar: sample 'b' has an image but no \.cls label"):
        read_wds(tmp_path, "test")


def test_a_shard_that_nshards_counts_but_is_missing_is_named(mixed_formats, tmp_path):
    classnames = tmp_path / "classnames.txt"
    (templates := tmp_path / "templates.txt").write_text("a single {c}\n")
    write_classification(mixed_formats, classnames, templates, tmp_path / "wds", samples_per_shard=10)
    (tmp_path / "wds/test/1.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"test/1\.tar: shard missing"):
        read_wds(tmp_path / "wds", "test")


def test_the_demo_split_is_written_alone_onto_a_demo_world_written_before_it(tiny_demo, tmp_path):
    """``make data`` on a demo world from before this split: the split comes out as the generator
    writes it, and every other file stays byte for byte as it was."""
    world = tmp_path / "demo"
    shutil.copytree(tiny_demo, world, ignore=shutil.ignore_patterns("classification"))

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    before = digests(world)
    assert write_demo_classification(["--out", str(world), "--tiny"]) == 0
    after = digests(world)
    assert {name: d for name, d in after.items() if not name.startswith("classification")} == before
    written = {name: d for name, d in digests(tiny_demo).items() if name.startswith("classification")}
    assert {name: d for name, d in after.items() if name.startswith("classification")} == written


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_zero_shot_accuracy_is_clip_benchmarks_and_leaves_padding_out():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 7, generator=g)
    labels = torch.randint(0, 6, (60,), generator=g)  # class 6 has no image: left out of the mean recall
    metric = ZeroShotAccuracy(7)
    metric.update(logits[:25], labels[:25])
    metric.update(torch.cat([logits[25:], torch.randn(3, 7, generator=g)]),
                  torch.cat([labels[25:], torch.full((3,), PADDING)]))
    scores = metric.compute()
    ranked = logits.argsort(dim=1, descending=True)
    assert scores["top1"].item() == pytest.approx((ranked[:, 0] == labels).float().mean().item())
    assert scores["top5"].item() == pytest.approx((ranked[:, :5] == labels[:, None]).any(1).float().mean().item())
    assert scores["mean_per_class_recall"].item() == pytest.approx(balanced_accuracy_score(labels, ranked[:, 0]))
    assert int(scores["images"]) == 60
    assert chance_accuracy(7) == {"top1": 1 / 7, "top5": 5 / 7, "mean_per_class_recall": 1 / 7}
