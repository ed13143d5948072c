"""Write a COCO-format caption set as WebDataset tar shards in img2dataset's output layout.

    python -m mammut.data.write_shards --captions data/demo/annotations/captions_train.json \\
        --images data/demo/images/train --out data/demo/shards/train --samples-per-shard 1000

writes ``00000.tar, 00001.tar, ...``, each with ``<key>.jpg`` (the image file's bytes, unchanged;
``.png`` and ``.webp`` keep their extension), ``<key>.txt`` (the image's first caption) and
``<key>.json`` (img2dataset's fields: url, caption, key, status, width, height, sha256, ...,
plus ``image_id`` and ``captions``, every caption of the image), and beside each tar
``<shard>.parquet`` (the same fields, one row per sample) and ``<shard>_stats.json``. Keys are
img2dataset's: the shard number then the sample's place in it, zero-padded (``000010042``).
Karpathy-format files are read too (``--split``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from mammut.data.caption_files import read_captions
from mammut.data.coco import CaptionRecord
from mammut.data.errors import DataFormatError

EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def write_shards(records: list[CaptionRecord], out: Path, samples_per_shard: int = 1000,
                 first_shard: int = 0) -> list[Path]:
    """Write ``records`` as shards under ``out``, numbered from ``first_shard`` (to add to a set
    already written, as a second img2dataset job does); returns the tar files written."""
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    if not records:
        raise ValueError("no records to write")
    out.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(records) / samples_per_shard)
    shard_digits = max(5, len(str(first_shard + num_shards - 1)))
    sample_digits = len(str(samples_per_shard - 1))
    written = []
    for shard in range(num_shards):
        name = f"{first_shard + shard:0{shard_digits}d}"
        start = time.time()
        rows = []
        with wds.TarWriter(str(out / f"{name}.tar"), encoder=False) as tar:
            for position, record in enumerate(records[shard * samples_per_shard:(shard + 1) * samples_per_shard]):
                key = f"{name}{position:0{sample_digits}d}"
                image, extension, row = _sample(record, key)
                tar.write({"__key__": key, extension: image, "txt": record.captions[0].encode("utf-8"),
                           "json": json.dumps(row).encode("utf-8")})
                rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows), out / f"{name}.parquet")
        end = time.time()
        (out / f"{name}_stats.json").write_text(json.dumps({
            "count": len(rows), "successes": len(rows), "failed_to_download": 0, "failed_to_resize": 0,
            "duration": end - start, "start_time": start, "end_time": end, "status_dict": {"success": len(rows)},
        }, indent=4))
        written.append(out / f"{name}.tar")
    return written


def _sample(record: CaptionRecord, key: str) -> tuple[bytes, str, dict]:
    extension = EXTENSIONS.get(record.path.suffix.lower())
    if extension is None:
        raise DataFormatError(f"{record.path}: image id {record.image_id}: not a .jpg, .png or .webp file")
    try:
        data = record.path.read_bytes()
        with Image.open(record.path) as image:
            width, height = image.size
    except OSError as error:
        raise DataFormatError(f"{record.path}: image id {record.image_id}: cannot read the image ({error})") from error
    row = {"url": str(record.path), "caption": record.captions[0], "key": key, "status": "success",
           "error_message": None, "width": width, "height": height, "original_width": width,
           "original_height": height, "exif": None, "sha256": hashlib.sha256(data).hexdigest(),
           "image_id": record.image_id, "captions": list(record.captions)}
    return data, extension, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.data.write_shards", description=__doc__.split("\n")[0])
    parser.add_argument("--captions", required=True, help="COCO captions (or Karpathy) JSON file")
    parser.add_argument("--images", required=True, help="folder the file's image names are relative to")
    parser.add_argument("--out", required=True, help="folder for the shards")
    parser.add_argument("--split", default="train", help="split to read from a Karpathy file (default: %(default)s)")
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="(default: %(default)s)")
    parser.add_argument("--first-shard", type=int, default=0, help="number of the first shard (default: %(default)s)")
    args = parser.parse_args(argv)
    records, _ = read_captions(args.captions, args.images, args.split)
    start = time.perf_counter()
    shards = write_shards(records, Path(args.out), args.samples_per_shard, args.first_shard)
    print(f"wrote {len(records)} samples in {len(shards)} shards to {args.out} "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
