"""Write a classification set or a caption set in CLIP_benchmark's WebDataset layout.

CLIP_benchmark reads its own layout (``wds/<name>`` datasets). So that it and mammut score the same
images, this writes what mammut reads (an ImageFolder tree, a COCO or Karpathy caption file) in it:

    python -m mammut.data.benchmark_wds classification --images data/demo/classification/test \\
        --classnames data/demo/classification/classnames.txt \\
        --templates data/demo/classification/zeroshot_classification_templates.txt \\
        --out data/demo/benchmark/demo_classes
    python -m mammut.data.benchmark_wds retrieval --captions data/demo/annotations/captions_test.json \\
        --images data/demo/images/test --out data/demo/benchmark/demo_captions

The layout: ``<out>/<split>/{0..N-1}.tar`` with ``<key>.<jpg|png|webp>`` and ``<key>.cls`` (the
class index) or ``<key>.txt`` (the image's captions, one per line), ``<out>/<split>/nshards.txt``;
for classification ``classnames.txt`` and ``zeroshot_classification_templates.txt``, for
retrieval ``dataset_type.txt`` holding "retrieval". Keys are the samples' positions, in the order
of the source. Image bytes are copied as they are; an image in a format CLIP_benchmark does not
read is stored as PNG (lossless).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterable
from pathlib import Path

import webdataset as wds

from mammut.data.caption_files import read_captions
from mammut.data.classification import WDS_IMAGE_EXTENSIONS, read_image_folder
from mammut.data.images import load_rgb_image

SAMPLES_PER_SHARD = 1000


def image_member(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) of an image as a tar member."""
    extension = path.suffix.lower().lstrip(".")
    if extension in WDS_IMAGE_EXTENSIONS:
        return extension, path.read_bytes()
    encoded = io.BytesIO()
    load_rgb_image(path).save(encoded, format="PNG")
    return "png", encoded.getvalue()


def write_shards(samples: Iterable[dict], folder: Path, samples_per_shard: int = SAMPLES_PER_SHARD) -> int:
    """Write samples (webdataset dicts without ``__key__``) as ``folder/{0..N-1}.tar`` and
    ``folder/nshards.txt``; return the number of samples."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.tar"):  # an earlier, larger set would leave shards nshards.txt does not count
        stale.unlink()
    count, writer = 0, None
    try:
        for sample in samples:
            if count % samples_per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = wds.TarWriter(str(folder / f"{count // samples_per_shard}.tar"))
            writer.write({"__key__": f"{count:08d}", **sample})
            count += 1
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise ValueError(f"{folder}: nothing to write")
    (folder / "nshards.txt").write_text(f"{(count - 1) // samples_per_shard + 1}\n")
    return count


def write_classification(images: Path, classnames: Path, templates: Path, out: Path, split: str = "test",
                         samples_per_shard: int = SAMPLES_PER_SHARD) -> int:
    """An ImageFolder tree (with its class-names and templates files) in CLIP_benchmark's layout."""
    dataset = read_image_folder(images, classnames, templates)

    def samples():
        for image in dataset.images:
            extension, data = image_member(Path(image.source))
            yield {extension: data, "cls": image.label}

    count = write_shards(samples(), out / split, samples_per_shard)
    (out / "classnames.txt").write_text("".join(f"{name}\n" for name in dataset.classnames))
    (out / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in dataset.templates))
    (out / "dataset_type.txt").unlink(missing_ok=True)  # absent: a classification set
    return count


def write_retrieval(captions: Path, images: Path, out: Path, split: str = "test", annotation_format: str = "auto",
                    samples_per_shard: int = SAMPLES_PER_SHARD) -> int:
    """A caption set (COCO or Karpathy format, ``split`` of it) in CLIP_benchmark's retrieval layout."""
    records, _ = read_captions(captions, images, split, skip_bad_samples=False, format=annotation_format)

    def samples():
        for record in records:
            extension, data = image_member(Path(record.path))
            yield {extension: data, "txt": "\n".join(record.captions)}

    count = write_shards(samples(), out / split, samples_per_shard)
    (out / "dataset_type.txt").write_text("retrieval\n")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.data.benchmark_wds", description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    classification = kinds.add_parser("classification", help="an ImageFolder tree, one folder per class")
    classification.add_argument("--images", type=Path, required=True, help="the folder of class folders")
    classification.add_argument("--classnames", type=Path, required=True, help="line i names the i-th folder, sorted")
    classification.add_argument("--templates", type=Path, required=True, help="prompt templates, {c} for the class")
    retrieval = kinds.add_parser("retrieval", help="images with captions (COCO or Karpathy format)")
    retrieval.add_argument("--captions", type=Path, required=True, help="the caption file")
    retrieval.add_argument("--images", type=Path, required=True, help="the folder of its images")
    retrieval.add_argument("--format", default="auto", choices=("auto", "coco", "karpathy"))
    for sub in (classification, retrieval):
        sub.add_argument("--out", type=Path, required=True, help="the dataset root to write")
        sub.add_argument("--split", default="test", help="the split folder to write (default: %(default)s)")
        sub.add_argument("--samples-per-shard", type=int, default=SAMPLES_PER_SHARD)
    args = parser.parse_args(argv)
    if args.kind == "classification":
        count = write_classification(args.images, args.classnames, args.templates, args.out, args.split,
                                     args.samples_per_shard)
    else:
        count = write_retrieval(args.captions, args.images, args.out, args.split, args.format, args.samples_per_shard)
    print(f"{args.out}/{args.split}: {count} samples in {(count - 1) // args.samples_per_shard + 1} shards")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
